"""configs/recipes: every published system's config loads, names its paper and figure, holds only differences
from the defaults, and trains one step in a shrunken form (64 px, few images, no ImageNet download) with its
own model, loss, class weights, optimizer, schedule and sampler. The DPN-U-Net system also runs end to end
through the scripts with the commands docs/recipes.md documents (train -> ensemble with flip TTA, top-k by IoU,
closing grid, segmentation-based classifiers -> infer)."""
import importlib
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from strokekit.config import DEFAULTS, load_config
from strokekit.data.index import build_index
from strokekit.ensembling.spec import read_spec
from strokekit.training.engine import optimizer_step, setup
from strokekit.data.folds import read_folds
from strokekit.models.registry import build_model
from strokekit.models.recipes import HypercolumnUNet
from strokekit.data.submission import validate_phase1
from strokekit.models.weights import WeightsError
from conftest import small_phantom

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*/*.yaml"))
SYSTEMS = {"multitask", "vgg_unet", "deep_ensemble", "dpn_unet"}
SMALLEST_INPUT = {"inception_v3": 96, "inception_resnet_v2": 96}  # their stems need > 75 px
SHRINK = ["batch_size=2", "epochs=1", "num_workers=0", "pretrained=false", "epoch_steps=null"]
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}


def variants(path: Path) -> list[list[str]]:
    """The recipe as shipped plus each `# variant: --set k=v ...` line its header documents."""
    found = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# variant:"):
            words = shlex.split(line.split(":", 1)[1])
            assert words[0] == "--set", f"{path}: a variant line reads '# variant: --set key=value ...'"
            found.append(words[1:])
    return found


CASES = [pytest.param(path, sets, id=f"{path.parent.name}/{path.stem}{'+' + '+'.join(sets) if sets else ''}")
         for path in RECIPES for sets in variants(path)]


def shrink(path: Path, sets: list[str], data: Path) -> dict:
    """The recipe at test size: same model, loss, optimizer, schedule and sampler; tiny images and batches."""
    model = load_config(path, sets)["model"]
    size = SMALLEST_INPUT.get(model, 64)
    return load_config(path, [*sets, *SHRINK, f"img_size={size}", f"oof_size={size}", f"data={data}"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return small_phantom(tmp_path_factory.mktemp("recipes"), n=48, seed=0, size=64, n_test1=6, n_test2=4)


def test_every_system_has_recipes_with_unique_names():
    assert {p.parent.name for p in RECIPES} == SYSTEMS
    names = [load_config(p)["name"] for p in RECIPES]
    assert len(set(names)) == len(names), names
    assert all(name.startswith(p.parent.name) for name, p in zip(names, RECIPES))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_names_its_system_and_figure_and_holds_only_changes(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith('# Recipe "'), f"{path} must open with a comment naming the system it reproduces"
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Published:" in header and re.search(r"Published:[^.]*\d", header), f"{path}: no published figure"
    raw = yaml.safe_load(text)
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(DEFAULTS.get(key), dict):
            assert all(v != DEFAULTS[key][k] for k, v in value.items()), f"{path}: {key} repeats a default"
        else:
            assert value != DEFAULTS[key], f"{path}: {key}: {value!r} is the default; leave it out"


@pytest.mark.parametrize("path,sets", CASES)
def test_recipe_trains_one_step_shrunken(path, sets, phantom):
    cfg = shrink(path, sets, phantom)
    index, _ = build_index(phantom)
    tr = setup(cfg, index, read_folds(phantom / "folds.csv", index), fold=0)
    assert isinstance(tr.optimizer, OPTIMIZERS[cfg["optimizer"]]) and tr.schedule.kind == cfg["scheduler"]
    if cfg["class_weights"] == "balanced":  # inverse class frequency of this fold's training images
        counts = np.bincount(tr.train_loader.dataset.targets, minlength=2)
        assert np.allclose(tr.info["class_weights"], counts.sum() / (2 * counts))
    batch = next(iter(tr.train_loader))
    if cfg["sampler"] == "lesion":  # the index's lesion flags of the batch's images
        rows = index.set_index("image_id").loc[batch["image_id"].tolist()]
        with_lesion = int(((rows["has_ischemic"] == 1) | (rows["has_hemorrhagic"] == 1)).sum())
        wanted = round(cfg["lesion_share"] * cfg["batch_size"])  # lesion_rest all: the rest may hold lesions too
        assert with_lesion == wanted if cfg["lesion_rest"] == "clear" else with_lesion >= wanted, rows
    frozen = {id(p) for g in tr.optimizer.param_groups if g["lr"] == 0 for p in g["params"]}  # freeze_epochs
    assert bool(frozen) == bool(cfg["freeze_epochs"])
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.model.train()
    target = batch["mask" if cfg["task"] == "seg" else "target"]
    for _ in range(2):  # two steps: a block's zero-initialised last BatchNorm (timm ResNets) stops its grads once
        loss = tr.loss_fn(tr.model(batch["image"]), target)
        assert torch.isfinite(loss), f"{path.stem}: loss {loss}"
        loss.backward()
        optimizer_step(tr)
    params = list(tr.model.parameters())
    moved = sum(not torch.equal(b, p) for b, p in zip(before, params) if id(p) not in frozen)
    trained = len(params) - len(frozen)
    assert moved > 0.5 * trained, f"{path.stem}: only {moved}/{trained} trained tensors changed"
    assert all(torch.equal(b, p) for b, p in zip(before, params) if id(p) in frozen), "a frozen tensor moved"
    if cfg["scheduler"] == "exponential":
        assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(cfg["lr"] * cfg["lr_gamma"] ** 2)


def test_hypercolumn_unet_sees_every_decoder_stage():
    """The head reads all decoder stages at input size (dpn68/92 themselves train in the recipe tests)."""
    cfg = load_config(None, ["task=seg", "model=hypercolumn_unet", "encoder=resnet18", "drop_rate=0.3"])
    model = build_model(cfg).train()
    assert isinstance(model, HypercolumnUNet)
    assert model.head[1].in_channels == sum(HypercolumnUNet.SLIM_DECODER) == 80  # all 5 stages of 16 concatenated
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, 64, 96)
    out[:, 1].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.blocks.parameters())
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hypercolumn_unet_pretrained_offline_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # read at import by huggingface_hub
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("STROKEKIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = load_config(ROOT / "configs/recipes/dpn_unet/seg_dpn92_hypercolumn.yaml", ["pretrained=true"])
    with pytest.raises(WeightsError, match="dpn92"):
        build_model(cfg)


def script(name: str, *args) -> None:
    """Run a top-level script's main() in this process (one import of torch for the whole test)."""
    code = importlib.import_module(name).main([str(a) for a in args])
    assert code == 0, f"{name}.py {' '.join(map(str, args))} exited {code}"


def submit_and_score(phantom: Path, tmp_path: Path, phase1: Path, phase2: Path, type_spec: Path | None = None):
    """infer.py both phases on the phantom's test splits, then score.py on each: valid submissions, scored."""
    script("infer", "--phase", 1, "--ensemble", phase1, "--data", phantom, "--split", "test1",
           "--out", tmp_path / "sub1")
    index, _ = build_index(phantom)
    test_ids = set(index.loc[index["split"] == "test1", "image_id"].tolist())
    assert set(validate_phase1(tmp_path / "sub1" / "asama1.txt", test_ids)) == test_ids
    script("infer", "--phase", 2, "--ensemble", phase2, *(["--type-ensemble", type_spec] if type_spec else []),
           "--data", phantom, "--split", "test2", "--out", tmp_path / "sub2")
    masks = sorted(p.name for p in (tmp_path / "sub2").glob("*.png"))
    assert masks == sorted(p.name for p in (phantom / "YARISMA_2" / "MASK").glob("*.png"))
    script("score", "--phase", 1, "--pred", tmp_path / "sub1" / "asama1.txt",
           "--truth", phantom / "YARISMA_1" / "ASAMA1_Cevaplar.txt", "--n-boot", 0)
    script("score", "--phase", 2, "--pred", tmp_path / "sub2", "--truth", phantom / "YARISMA_2" / "MASK",
           "--n-boot", 0)


def train_shrunken(recipe: str, runs: Path, phantom: Path, *extra) -> Path:
    """train.py on a recipe at test size (2 folds x 1 epoch, 32 px, batch 2); returns its run folder."""
    path = ROOT / "configs/recipes" / recipe
    script("train", "--config", path, "--fold", "all", "--out", runs, "--no-progress", *extra, "--set",
           *SHRINK, "img_size=32", "oof_size=32", f"data={phantom}")
    return runs / load_config(path)["name"]


def test_dpn_unet_system_end_to_end(phantom, tmp_path):
    """The DPN-U-Net commands of docs/recipes.md on the phantom, shrunken: N = 2 seeded runs on fold 0, the
    best 1 kept, the paper's fixed threshold and closing, no TTA, seg-based classifiers -> infer -> score."""
    recipe = ROOT / "configs/recipes/dpn_unet/seg_dpn92_hypercolumn.yaml"
    script("train", "--config", recipe, "--fold", 0, "--seeds", "0,1", "--out", tmp_path / "runs", "--no-progress",
           "--set", *SHRINK, "img_size=32", "oof_size=32", f"data={phantom}", "encoder=dpn68")  # the lighter variant
    runs = sorted((tmp_path / "runs").glob("dpn_unet_seg_dpn92_hypercolumn_s*"))
    assert len(runs) == 2
    common = ["--task", "seg", *runs, "--top-runs", 1, "--keep-blend", "--metric", "iou", "--tta", "none",
              "--seg-feature", "mean",
              "--grid", ROOT / "configs/grids/dpn_unet_paper.yaml", "--n-boot", 20]
    script("ensemble", *common, "--seg-classifier", "stroke", "--out", tmp_path / "ens/dpn_stroke.yaml")
    script("ensemble", *common, "--seg-classifier", "type", "--out", tmp_path / "ens/dpn_type.yaml")
    stroke, seg = read_spec(tmp_path / "ens/dpn_stroke.yaml"), read_spec(tmp_path / "ens/dpn_type.yaml")
    for spec in (stroke, seg):
        assert spec["tta"] == ["none"] and len(spec["members"]) == 1          # the best 1 of 2 runs
        assert set(spec["postprocess"]["closing"].values()) == {3}           # the paper's closing radius
        assert set(spec["postprocess"]["threshold"].values()) == {0.47}      # and its k_axial
    assert (stroke["seg_classifier"]["target"], seg["seg_classifier"]["target"]) == ("stroke", "type")
    submit_and_score(phantom, tmp_path, tmp_path / "ens/dpn_stroke.yaml", tmp_path / "ens/dpn_type.yaml")


SYSTEMS_E2E = {  # per system: the recipes trained, then the ensemble.py arguments per spec (docs/recipes.md)
    "multitask": (["multitask/stroke_effnetv2b0.yaml", "multitask/type_simple_cnn.yaml", "multitask/seg_unet_r50.yaml"],
                  {"stroke": ["multitask_stroke_effnetv2b0", "--objective", "recall", "--target-recall", 0.88],
                   "type": ["multitask_type_simple_cnn", "--threshold-range", 0.5, 0.5],
                   "seg": ["multitask_seg_unet_r50", "--metric", "iou", "--grid", ROOT / "configs/grids/argmax.yaml"]}),
    "vgg_unet": (["vgg_unet/stroke_vgg16.yaml", "vgg_unet/seg_unet_scse.yaml"],
                 {"stroke": ["vgg_unet_stroke_vgg16"],
                  "seg": ["vgg_unet_seg_unet_scse", "--metric", "iou", "--grid",
                          ROOT / "configs/grids/threshold_only.yaml"]}),
    "deep_ensemble": (["deep_ensemble/stroke_resnet34.yaml", "deep_ensemble/stroke_mobilenet.yaml",
                       "deep_ensemble/stroke_densenet121.yaml", "deep_ensemble/seg_unet_r34.yaml"],
                      {"stroke": ["deep_ensemble_stroke_resnet34", "deep_ensemble_stroke_mobilenet",
                                  "deep_ensemble_stroke_densenet121", "--blend", "vote", "--keep-blend",
                                  "--vote-threshold", "0.5", "--threshold-range", 0.5, 0.5],
                       "seg": ["deep_ensemble_seg_unet_r34", "--metric", "iou", "--grid",
                               ROOT / "configs/grids/argmax.yaml"]}),
}


@pytest.mark.parametrize("system", sorted(SYSTEMS_E2E))
def test_system_end_to_end(system, phantom, tmp_path):
    """Each other system's headline recipes shrunken (2 folds x 1 epoch, 32 px) -> ensemble.py as documented
    -> infer.py phases 1 and 2 -> score.py: valid submissions. (Every recipe also trains two steps above.)"""
    recipes, specs = SYSTEMS_E2E[system]
    for recipe in recipes:
        train_shrunken(recipe, tmp_path / "runs", phantom)
    out = {}
    for task, args in specs.items():
        names = [a for a in args if isinstance(a, str) and a.startswith(system)]
        rest = [a for a in args if a not in names]
        out[task] = tmp_path / "ens" / f"{task}.yaml"
        script("ensemble", "--task", task, *[tmp_path / "runs" / n for n in names], *rest, "--n-boot", 20,
               "--out", out[task])
    if system == "deep_ensemble":
        vote = read_spec(out["stroke"])
        assert vote["blend"] == "vote" and len(vote["members"]) == 3
        assert vote["threshold"]["value"] == 0.5                      # a majority: 2 of the 3 members' votes
    submit_and_score(phantom, tmp_path, out["stroke"], out["seg"], out.get("type"))
