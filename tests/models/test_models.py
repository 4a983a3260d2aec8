"""models.py: every family builds, runs forward/backward at 64 px, round-trips through a checkpoint, and
loads weights offline (local files, the hub cache) or fails fast saying how to provide them."""
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from strokekit.models.checkpoint import build_checkpoint, read_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.models.registry import ModelNameError, build_model, load_checkpoint
from strokekit.models.weights import WeightsError


def cfg_for(task: str, model: str, encoder: str = "resnet18", **changes) -> dict:
    cfg = load_config(None, [f"task={task}", f"model={model}", "img_size=64"])
    cfg["encoder"] = cfg["encoder"] if encoder == "-" else encoder
    cfg.update(changes)
    return cfg


def forward_backward(model: nn.Module, in_chans: int = 3) -> torch.Tensor:
    model.train()
    out = model(torch.randn(2, in_chans, 64, 64))
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # encoders may hold unused layers
    assert len(grads) > 0.8 * len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet18", "efficientnet_b0", "tf_efficientnetv2_b0", "densenet121"])
def test_classifier_forward_backward(name):
    out = forward_backward(build_model(cfg_for("stroke", name)))
    assert out.shape == (2, 2)  # two logits: P(positive) = softmax[:, 1]


@pytest.mark.parametrize("arch,encoder", [
    ("Unet", "resnet18"), ("Unet", "resnet34"), ("Unet", "efficientnet-b0"), ("Unet", "densenet121"),
    ("Unet", "dpn68"), ("Unet", "vgg11"), ("Unet", "tu-resnet18"), ("UnetPlusPlus", "resnet18"),
    ("FPN", "resnet18"), ("DeepLabV3Plus", "resnet18"), ("tiny_unet", "-"),
])
def test_seg_forward_backward(arch, encoder):
    out = forward_backward(build_model(cfg_for("seg", arch, encoder)))
    assert out.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("in_chans", [1, 2])
def test_in_chans(in_chans):
    assert forward_backward(build_model(cfg_for("type", "resnet18", in_chans=in_chans)), in_chans).shape == (2, 2)
    seg = build_model(cfg_for("seg", "Unet", "resnet18", in_chans=in_chans))
    assert forward_backward(seg, in_chans).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("task,model,encoder,words", [
    ("stroke", "resnt18", "-", ["resnet18", "tiny_cnn"]),
    ("seg", "Unett", "resnet18", ["unet", "fpn", "architecture"]),
    ("seg", "Unet", "resnet35", ["resnet34", "tu-"]),
    ("seg", "tiny_cnn", "-", ["tiny_unet"]),
    ("stroke", "tiny_unet", "-", ["tiny_cnn"]),
])
def test_unknown_or_mismatched_names_list_valid_ones(task, model, encoder, words):
    with pytest.raises(ModelNameError) as err:
        build_model(cfg_for(task, model, encoder))
    assert all(w in str(err.value) for w in words), str(err.value)


class Wrapped(nn.Module):
    """Gives state-dict keys a `module.` prefix, as DataParallel / DDP do."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("task,model", [("stroke", "resnet18"), ("seg", "Unet"), ("seg", "tiny_unet")])
def test_checkpoint_round_trip(tmp_path, task, model):
    cfg = cfg_for(task, model)
    net = build_model(cfg).eval()
    ema = build_model(cfg).eval()
    path = tmp_path / "best.pt"
    save_atomic(build_checkpoint(Wrapped(net), cfg, 3 if task == "seg" else 2, ema=ema, epoch=1), path)
    raw = torch.load(path, weights_only=True)  # plain types only
    assert not any(k.startswith("module.") for k in raw["model"])
    assert read_checkpoint(path)["config"] == cfg
    x = torch.randn(2, 3, 64, 64)
    loaded, loaded_cfg = load_checkpoint(path)  # EMA weights by default
    assert loaded_cfg == cfg and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), ema(x))
        assert torch.equal(load_checkpoint(path, use_ema=False)[0](x), net(x))


@pytest.mark.parametrize("model", ["tiny_cnn", "simple_cnn", "resnet18", "efficientnet_b0"])
def test_aux_seg_adds_a_lesion_head_that_inference_never_sees(tmp_path, model):
    cfg = cfg_for("stroke", model, aux_seg=1.0)
    net = build_model(cfg)
    logits, lesion = net.train()(torch.randn(2, 3, 64, 64))  # training: (image logits, lesion-cell logits)
    assert logits.shape == (2, 2) and lesion.shape[:2] == (2, 2) and lesion.ndim == 4
    (logits.mean() + lesion.mean()).backward()
    assert net.lesion_head.weight.grad.abs().sum() > 0  # the head trains with the net
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net.net(x))  # eval: the plain classifier's logits, nothing else
    path = tmp_path / "best.pt"
    save_atomic(build_checkpoint(net, cfg, 2, epoch=1), path)
    loaded, _ = load_checkpoint(path)  # the config rebuilds the head, so the state dict fits
    plain = build_model({**cfg, "aux_seg": 0.0, "weights": str(path)}).eval()  # its classifier as `weights`
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x)) and torch.equal(plain(x), net(x))


def test_aux_seg_needs_a_feature_map():
    with pytest.raises(ModelNameError, match="aux_seg needs a convolutional feature map"):
        build_model(cfg_for("stroke", "vit_tiny_patch16_224", aux_seg=1.0, img_size=224))


def test_broken_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"\x80\x02 truncated")
    with pytest.raises(WeightsError, match="not a loadable checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(WeightsError, match="not a strokekit checkpoint"):
        load_checkpoint(path)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty hub and torch caches, HF_HUB_OFFLINE unset (the kit's default: offline). huggingface_hub reads
    HF_HUB_CACHE at import, so its constant is pointed at the empty cache too."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("STROKEKIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after the test
    return tmp_path / "hf"


@pytest.mark.parametrize("offline,alias,allowed", [(None, None, False), ("1", None, False), ("0", None, True),
                                                    ("false", None, True), ("1", "1", False), (None, "1", True)])
def test_hf_hub_offline_is_the_switch(empty_caches, monkeypatch, offline, alias, allowed):
    """HF_HUB_OFFLINE=0 allows downloads, 1 forbids them, unset is offline; the deprecated
    STROKEKIT_ALLOW_DOWNLOAD=1 counts only while HF_HUB_OFFLINE is unset; huggingface_hub follows."""
    from huggingface_hub import constants

    from strokekit.models.weights import apply_offline_policy, downloads_allowed

    for name, value in (("HF_HUB_OFFLINE", offline), ("STROKEKIT_ALLOW_DOWNLOAD", alias)):
        if value is not None:
            monkeypatch.setenv(name, value)
    assert downloads_allowed() is allowed
    apply_offline_policy()
    assert constants.HF_HUB_OFFLINE is (not allowed)
    assert downloads_allowed() is allowed  # the policy, once applied, reads the same


def test_hub_cache_is_huggingface_hubs_own(empty_caches):
    from strokekit.models.weights import hf_cache_dir

    assert hf_cache_dir() == empty_caches


@pytest.mark.parametrize("task,model,encoder", [("stroke", "resnet18", "-"), ("seg", "Unet", "resnet34"),
                                                 ("seg", "Unet", "tu-resnet18")])
def test_pretrained_offline_without_cache_fails_fast(empty_caches, task, model, encoder):
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        build_model(cfg_for(task, model, encoder, pretrained=True))
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    for hint in ("not in the local cache", "HF_HUB_OFFLINE=0", "weights: /path/to/file", "pretrained=false"):
        assert hint in message


def _fake_hub_file(cache: Path, repo: str, filename: str, write) -> None:
    """A file in the Hugging Face cache layout: refs/main -> snapshots/<commit>/<filename>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    write(snapshot / filename)


def test_pretrained_loads_from_the_local_hub_cache(empty_caches):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", num_classes=1000)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    _fake_hub_file(empty_caches, repo, "model.safetensors", lambda p: save_file(state, str(p)))
    model = build_model(cfg_for("stroke", "resnet18", pretrained=True))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 2  # head re-initialised for our classes


def test_weights_file_for_timm_smp_and_in_chans(tmp_path):
    import timm
    source = timm.create_model("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model(cfg_for("stroke", "resnet18", weights=str(tmp_path / "r18.pth"), in_chans=1))
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    seg = build_model(cfg_for("seg", "Unet", "resnet18", weights=str(tmp_path / "r18.pth")))
    assert torch.equal(seg.encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_weights_from_a_strokekit_checkpoint(tmp_path):
    cfg = cfg_for("stroke", "resnet18")
    trained = build_model(cfg)
    save_atomic(build_checkpoint(trained, cfg, 2, epoch=3), tmp_path / "best.pt")
    warm = build_model(cfg_for("type", "resnet18", weights=str(tmp_path / "best.pt")))
    assert torch.equal(warm.fc.weight, trained.fc.weight)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(cfg_for("seg", "Unet", weights=str(tmp_path / "nope.pth")))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_config_builds_its_model(path):
    """Each shipped config is valid and names a model that builds (from scratch here, at 64 px)."""
    cfg = load_config(path, ["pretrained=false", "img_size=64"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, cfg["in_chans"], 64, 64))
    assert out.shape[1] == (3 if cfg["task"] == "seg" else 2)


def test_one_autocast_for_training_and_inference():
    """models/precision.py's autocast is the engine's and the predictor's: fp32 on the CPU whatever `amp` says,
    bf16 / fp16 on CUDA, and an unknown amp refused there."""
    from strokekit.inference import predict
    from strokekit.models.precision import autocast
    from strokekit.training import engine

    assert engine.autocast is autocast and predict.autocast is autocast
    for amp in ("bf16", "fp16", "none", None, False):
        with autocast(torch.device("cpu"), amp):
            assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    if not torch.cuda.is_available():
        pytest.skip("the CUDA half of the check needs a GPU")
    cuda = torch.device("cuda")
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("none", torch.float32)):
        with autocast(cuda, amp):
            assert (torch.ones(4, 4, device=cuda) @ torch.ones(4, 4, device=cuda)).dtype == dtype
    with pytest.raises(ValueError, match="amp 'fp8'"):
        autocast(cuda, "fp8")


def test_weights_from_a_sigmoid_head_deep_supervision_checkpoint(tmp_path):
    """Such a U-Net is SigmoidLesionHead(DeepSupervision(Unet)): its keys carry net.net.; all of the Unet loads."""
    sets = dict(deep_supervision=2, seg_head="sigmoid", loss="bce")
    trained = build_model(cfg_for("seg", "Unet", "resnet18", **sets))
    assert any(k.startswith("net.net.") for k in trained.state_dict())
    save_atomic(build_checkpoint(trained, cfg_for("seg", "Unet", "resnet18", **sets), 3, epoch=1), tmp_path / "b.pt")
    warm = build_model(cfg_for("seg", "Unet", "resnet18", weights=str(tmp_path / "b.pt")))
    unet = trained.net.net
    assert torch.equal(warm.encoder.layer1[0].conv1.weight, unet.encoder.layer1[0].conv1.weight)
    pairs = zip(warm.decoder.state_dict().values(), unet.decoder.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)


def test_global_pool_picks_a_timm_classifiers_pooling():
    """global_pool: catavgmax puts max pooling beside the average (a small lesion's evidence kept undiluted)."""
    plain = build_model(cfg_for("stroke", "resnet18"))
    both = build_model(cfg_for("stroke", "resnet18", global_pool="catavgmax"))
    assert plain.fc.in_features == 512 and both.fc.in_features == 1024
    x = torch.zeros(1, 512, 4, 4)
    x[0, :, 0, 0] = 16.0                       # one hot cell: its mean is 1, its max 16
    pooled = both.global_pool(x)
    assert torch.allclose(pooled[0, :512], torch.ones(512))
    assert torch.allclose(pooled[0, 512:], torch.full((512,), 16.0))


@pytest.mark.parametrize("sets", [["task=seg", "model=Unet"], ["task=stroke", "model=simple_cnn"]])
def test_global_pool_is_refused_where_the_model_has_its_own(sets):
    from strokekit.config import ConfigError

    with pytest.raises(ConfigError, match="global_pool"):
        load_config(None, [*sets, "global_pool=max"])


def test_pre_logits_false_drops_vggs_fully_connected_block():
    """VGG's fc6 / fc7 (timm runs them as a 7x7 and a 1x1 conv) go: the output layer reads the pooled last
    convolution (512 channels), the features keep their weights, and the model still trains."""
    kept = build_model(cfg_for("stroke", "vgg11"))
    dropped = build_model(cfg_for("stroke", "vgg11", pre_logits=False))
    assert not isinstance(kept.pre_logits, nn.Identity) and isinstance(dropped.pre_logits, nn.Identity)
    assert kept.get_classifier().in_features == 4096 and dropped.get_classifier().in_features == 512
    params = lambda m: sum(p.numel() for p in m.parameters())
    assert params(kept) - params(dropped) > 100_000_000      # fc6 alone: 512 * 7 * 7 * 4096 weights
    x = torch.randn(2, 3, 64, 64)
    features = dropped.eval().forward_features(x)
    assert torch.equal(dropped.forward_head(features, pre_logits=True), features.mean((2, 3)))
    forward_backward(dropped)


def test_pre_logits_false_is_refused_where_there_is_no_such_block():
    from strokekit.config import ConfigError
    from strokekit.models.registry import ModelNameError

    with pytest.raises(ModelNameError, match="pre_logits"):
        build_model(cfg_for("stroke", "resnet18", pre_logits=False))
    with pytest.raises(ConfigError, match="pre_logits"):
        load_config(None, ["task=seg", "model=Unet", "pre_logits=false"])
