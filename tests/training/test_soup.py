"""Model soup (training/soup.py): runs fine-tuned from one checkpoint under several seeds averaged into one run;
runs of another initialisation, architecture, input or fold split refused."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import ensemble
import train as train_script
from conftest import small_phantom
from strokekit.models.checkpoint import read_checkpoint, save_atomic
from strokekit.training.soup import SoupError, check_soupable, eval_weights, read_soup_run, soup_runs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # trains four tiny runs (~10 s)


def train(*args):
    """train.py's main() in this process (no interpreter start-up per run)."""
    assert train_script.main([*map(str, args), "--fold", "0", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """s_s3, s_s4: from scratch under two seeds; ft_s5, ft_s6: both fine-tuned from s_s3's best.pt."""
    root = tmp_path_factory.mktemp("soup")
    data = small_phantom(root, n=60, seed=5, size=48, n_test1=2, n_test2=2)
    base = {"task": "stroke", "model": "tiny_cnn", "img_size": 32, "epochs": 1, "batch_size": 8, "num_workers": 0,
            "data": str(data), "oof_tta": ["none", "hflip"]}
    (root / "s.yaml").write_text(yaml.safe_dump({**base, "name": "s"}), encoding="utf-8")
    train("--config", root / "s.yaml", "--seeds", "3,4", "--out", root / "runs")
    (root / "ft.yaml").write_text(yaml.safe_dump({**base, "name": "ft", "epochs": 2, "lr": 3e-3,
                                                  "weights": str(root / "runs" / "s_s3" / "fold0" / "best.pt")}),
                                  encoding="utf-8")
    train("--config", root / "ft.yaml", "--seeds", "5,6", "--out", root / "runs")
    return root / "runs"


def weights(run: Path) -> dict:
    return eval_weights(read_checkpoint(run / "fold0" / "best.pt"))


def test_soup_of_identical_weights_is_the_model(runs):
    twin = Path(shutil.copytree(runs / "ft_s5", runs.parent / "twin"))
    soup = soup_runs([runs / "ft_s5", twin], runs.parent / "soups" / "same", log=lambda *a: None)
    souped, original = weights(soup), weights(runs / "ft_s5")
    assert souped.keys() == original.keys()
    assert any("running_var" in k for k in souped)     # BatchNorm statistics are in the state and averaged
    for name in original:
        assert torch.equal(souped[name], original[name]), name
    oof, oof0 = (pd.read_csv(r / "fold0" / "oof.csv") for r in (soup, runs / "ft_s5"))
    assert oof["image_id"].tolist() == oof0["image_id"].tolist()
    assert oof["prob"].to_numpy() == pytest.approx(oof0["prob"].to_numpy(), abs=1e-6)  # the same OOF pass


def test_soup_of_seeds_from_one_checkpoint_is_their_mean(runs):
    a, b = weights(runs / "ft_s5"), weights(runs / "ft_s6")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the seeds trained differently
    soup = soup_runs([runs / "ft_s5", runs / "ft_s6"], runs.parent / "soups" / "ft", log=lambda *a: None)
    souped = weights(soup)
    for name, tensor in a.items():
        if tensor.is_floating_point():                   # weights and BatchNorm running means / variances
            assert torch.allclose(souped[name], (tensor + b[name]) / 2, atol=1e-6), name
    fold = soup / "fold0"
    assert {"best.pt", "config.yaml", "oof.csv", "summary.json", "done"} <= {p.name for p in fold.iterdir()}
    assert yaml.safe_load((fold / "config.yaml").read_text())["name"] == "ft"
    assert read_checkpoint(fold / "best.pt")["souped_from"][0].endswith("ft_s5/fold0/best.pt")
    assert (soup / "soup.json").is_file()
    again = soup_runs([runs / "ft_s5", runs / "ft_s6"], soup, log=lambda *a: None)  # a soup folder is replaced
    assert all(torch.equal(weights(again)[k], souped[k]) for k in souped)
    assert not list(soup.parent.glob(".ft.*"))           # no partial or old copy left beside it


def test_ensemble_py_soup_writes_a_spec_of_the_souped_run(runs, capsys):
    spec = runs.parent / "soup.yaml"
    proc = subprocess.run([sys.executable, str(ROOT / "ensemble.py"), "--task", "stroke", runs / "ft_s5",
                           runs / "ft_s6", "--soup", runs.parent / "soups" / "cli", "--out", spec, "--n-boot", "50"],
                          cwd=runs.parent, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    members = yaml.safe_load(spec.read_text())["members"]
    assert [m["name"] for m in members] == ["cli"]
    assert all("soups/cli/fold0/best.pt" in c for m in members for c in m["checkpoints"])
    capsys.readouterr()
    code = ensemble.main([str(a) for a in ("--task", "stroke", runs / "s_s3", runs / "s_s4", "--soup",
                                           runs.parent / "soups" / "bad", "--out", spec)])  # in this process
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot soup"), err


def test_runs_from_different_inits_are_refused(runs):
    with pytest.raises(SoupError, match="start from different weights"):
        soup_runs([runs / "s_s3", runs / "s_s4"], runs.parent / "soups" / "scratch", log=lambda *a: None)
    assert not (runs.parent / "soups" / "scratch").exists()
    # the initialisation check is what refuses them: architecture, input and folds agree
    assert check_soupable([read_soup_run(runs / "s_s3"), read_soup_run(runs / "s_s4")], check_init=False) == [0]


def test_other_architecture_input_or_folds_are_refused(runs, tmp_path):
    shape = Path(shutil.copytree(runs / "ft_s6", tmp_path / "shape"))
    ckpt = read_checkpoint(shape / "fold0" / "best.pt")
    key = "ema" if ckpt.get("ema") else "model"
    name = next(k for k, v in ckpt[key].items() if v.ndim == 4)
    ckpt[key][name] = torch.zeros(*ckpt[key][name].shape[:-1], ckpt[key][name].shape[-1] + 2)
    save_atomic(ckpt, shape / "fold0" / "best.pt")
    with pytest.raises(SoupError, match="different architectures"):
        soup_runs([runs / "ft_s5", shape], tmp_path / "soup", log=lambda *a: None)

    size = Path(shutil.copytree(runs / "ft_s6", tmp_path / "size"))
    cfg = yaml.safe_load((size / "fold0" / "config.yaml").read_text())
    (size / "fold0" / "config.yaml").write_text(yaml.safe_dump({**cfg, "img_size": 48}))
    with pytest.raises(SoupError, match="img_size: 32 vs 48"):
        soup_runs([runs / "ft_s5", size], tmp_path / "soup", log=lambda *a: None)

    split = Path(shutil.copytree(runs / "ft_s6", tmp_path / "split"))
    oof = pd.read_csv(split / "fold0" / "oof.csv")
    oof.iloc[1:].to_csv(split / "fold0" / "oof.csv", index=False)
    with pytest.raises(SoupError, match="validates other images"):
        soup_runs([runs / "ft_s5", split], tmp_path / "soup", log=lambda *a: None)

    trained = runs / "ft_s5"
    with pytest.raises(SoupError, match="not a soup folder"):
        soup_runs([runs / "ft_s5", runs / "ft_s6"], trained, log=lambda *a: None)
    assert not (tmp_path / "soup").exists()
