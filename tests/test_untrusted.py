"""Untrusted files and wrong use: checkpoints never unpickle code, spec paths stay inside their roots, run names
and submission folders never write where they should not, and checkpoints of another task or another
number of input channels are clear errors."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import infer
import train
from helpers import write_png
from strokekit.models.checkpoint import FORMAT, build_checkpoint, read_checkpoint, save_atomic
from strokekit.config import load_config
from strokekit.ensembling.spec import SpecError, read_spec, write_spec
from strokekit.models.registry import build_model, load_checkpoint
from strokekit.inference.predict import EnsemblePredictor
from strokekit.inference.submit import prepare_out_dir
from strokekit.models.weights import WeightsError, read_state_dict

ROOT = Path(__file__).resolve().parents[1]


class Exploit:
    """Unpickling this runs code: it creates `marker`. weights_only=True must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {}, "config": {}, "num_outputs": 2, "epoch": 1,
                "payload": Exploit(marker)}, path)
    for load in (read_checkpoint, load_checkpoint, read_state_dict):
        with pytest.raises(WeightsError, match="evil.pt: not a"):
            load(path)
    with pytest.raises(WeightsError, match="evil.pt: not a"):
        build_model(load_config(None, ["model=tiny_cnn", f"weights={path}"]))
    assert not marker.exists()


UNSAFE_LOADS = [(r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
                (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
                (r"\bpickle\.loads?\(", "pickle.load"), (r"yaml\.(?:load|unsafe_load)\(", "yaml.load (not safe_load)")]


def test_no_source_file_loads_untrusted_bytes_unsafely():
    sources = [p for p in ROOT.glob("*.py")] + list((ROOT / "strokekit").rglob("*.py"))
    found = [f"{path.relative_to(ROOT)}: {what}" for path in sources for pattern, what in UNSAFE_LOADS
             if re.search(pattern, path.read_text(encoding="utf-8"))]
    assert found == []


def save_tiny(path: Path, task: str = "stroke", **changes) -> Path:
    cfg = load_config(None, [f"task={task}", f"model={'tiny_unet' if task == 'seg' else 'tiny_cnn'}",
                             "img_size=32", *(f"{k}={v}" for k, v in changes.items())])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 3 if task == "seg" else 2, epoch=1), path)
    return path


def spec_with(path: Path, *checkpoints: str) -> Path:
    return write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "m", "weight": 1.0, "checkpoints": list(checkpoints)}]}, path)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """proj/ensembles/*.yaml beside proj/runs/, run from proj/, and a checkpoint elsewhere in tmp/etc."""
    proj = tmp_path / "proj"
    save_tiny(proj / "runs" / "a" / "fold0" / "best.pt")
    save_tiny(tmp_path / "etc" / "x.pt")
    for i in (1, 2):
        write_png(proj / "YARISMA_1" / "PNG" / f"{i}.png", np.full((32, 32), 40 * i, np.uint8))
    monkeypatch.chdir(proj)
    return proj


def test_spec_checkpoints_outside_the_allowed_folders_are_refused(project, tmp_path, capsys):
    inside = spec_with(project / "ensembles" / "ok.yaml", "../runs/a/fold0/best.pt")
    assert read_spec(inside)["members"][0]["checkpoint_paths"] == [str(project / "runs/a/fold0/best.pt")]
    for name, ref in (("up.yaml", "../../etc/x.pt"), ("abs.yaml", str(tmp_path / "etc" / "x.pt")),
                      ("sneaky.yaml", "../runs/../../etc/x.pt")):
        spec = spec_with(project / "ensembles" / name, ref)
        with pytest.raises(SpecError, match="outside the folders a spec may name"):
            read_spec(spec)
        assert EnsemblePredictor(str(spec), device="cpu", allow_outside=True).n_checkpoints == 1
    args = ["--phase", "1", "--ensemble", str(project / "ensembles" / "up.yaml"), "--data", "YARISMA_1",
            "--device", "cpu"]
    assert infer.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-outside" in err and not (project / "submissions").exists()
    assert infer.main(args + ["--allow-outside", "--out", "sub"]) == 0
    assert (project / "sub" / "asama1.txt").is_file()


def test_a_run_name_cannot_lead_outside_the_runs_folder(tmp_path, capsys):
    code = train.main(["--config", str(ROOT / "configs" / "tiny_stroke.yaml"), "--data", str(tmp_path),
                       "--out", str(tmp_path / "runs"), "--set", "name=../../escaped"])
    assert code == 2 and "must be a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists()


def test_a_submission_folder_is_only_replaced_with_overwrite(tmp_path):
    from strokekit.inference.manifest import write_manifest

    out = tmp_path / "sub"
    out.mkdir()
    for name in ("asama1.txt", "probs.csv", "7.png", "notes.txt"):
        (out / name).write_text("old")
    write_manifest(out, {"written_by": "infer.py"}, command=["infer.py"])  # infer.py wrote it (notes.txt too)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        prepare_out_dir(out, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["7.png", "asama1.txt", "manifest.json", "notes.txt", "probs.csv"]
    prepare_out_dir(out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # not a submission file: it stays


def test_checkpoints_of_another_task_or_channel_count_are_clear_errors(project, capsys):
    save_tiny(project / "runs" / "seg.pt", task="seg")
    save_tiny(project / "runs" / "one_channel.pt", in_chans=1)
    cases = {"task.yaml": (["../runs/seg.pt"], "a seg checkpoint in a stroke ensemble"),
             "chans.yaml": (["../runs/a/fold0/best.pt", "../runs/one_channel.pt"], "preprocesses images differently")}
    for name, (refs, message) in cases.items():
        spec = spec_with(project / "ensembles" / name, *refs)
        assert infer.main(["--phase", "1", "--ensemble", str(spec), "--data", "YARISMA_1", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    # weights that do not fit the channels their own config names
    ckpt = torch.load(project / "runs" / "one_channel.pt", weights_only=True)
    ckpt["config"]["in_chans"] = 3
    torch.save(ckpt, project / "runs" / "tampered.pt")
    with pytest.raises(WeightsError, match=r"tampered.pt: weights do not fit tiny_cnn .*\(in_chans=3, 2 outputs\)"):
        load_checkpoint(project / "runs" / "tampered.pt")
