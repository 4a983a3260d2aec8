"""export.py: a model folder moved away from runs/ reproduces infer.py's submissions byte for byte, holds
safetensors weights equal to the checkpoints' and a model.json that describes every member, and a folder
whose files were changed is refused (infer.py exit 2, Predictor raises)."""
import json
import shutil

import numpy as np
import pytest
import torch
from phantom_loop import run_main
from safetensors.torch import load_file

from strokekit.models.checkpoint import read_checkpoint
from strokekit.ensembling.spec import read_spec
from strokekit.inference.manifest import sha256
from strokekit.inference.modelfolder import ModelFolderError, read_model_folder


def submission_files(folder) -> dict[str, bytes]:
    """Every file infer.py wrote except manifest.json (paths, time) and probs.npz (zip timestamps)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name not in ("manifest.json", "probs.npz")}


@pytest.mark.parametrize("phase", [1, 2])
def test_moved_model_folder_reproduces_the_submission_byte_for_byte(shipped, phase):
    from_spec = submission_files(shipped.subs[("spec", phase)])
    from_model = submission_files(shipped.subs[("model", phase)])
    expected = {"asama1.txt", "probs.csv"} if phase == 1 else {"types.csv"}
    assert expected <= set(from_spec) and (phase == 1 or sum(n.endswith(".png") for n in from_spec) == 16)
    assert from_model.keys() == from_spec.keys()
    assert [n for n in from_spec if from_model[n] != from_spec[n]] == []
    if phase == 2:  # the saved probabilities too (compared as arrays: the zip holds write times)
        with np.load(shipped.subs[("spec", 2)] / "probs.npz") as a, \
                np.load(shipped.subs[("model", 2)] / "probs.npz") as b:
            assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    manifest = json.loads((shipped.subs[("model", phase)] / "manifest.json").read_text())
    assert manifest["spec"]["model_folder"] == str(shipped.model.resolve())


def test_model_json_describes_every_member_and_points_nowhere_else(shipped, loop, stroke_spec, seg_spec, type_spec):
    text = (shipped.model / "model.json").read_text()
    model = json.loads(text)
    assert str(loop.root) not in text and "runs/" not in text and "best.pt" not in text
    assert set(model["ensembles"]) == {"stroke", "seg", "type"} and model["kit_version"]
    for role, spec_path in (("stroke", stroke_spec[0]), ("seg", seg_spec[0]), ("type", type_spec)):
        spec, entry = read_spec(spec_path), model["ensembles"][role]
        assert entry["tta"] == spec["tta"] and entry["blend"] == spec["blend"]
        for key in ("threshold", "postprocess", "seg_classifier"):
            assert entry.get(key) == spec.get(key)
        assert [m["name"] for m in entry["members"]] == [m["name"] for m in spec["members"]]
        for item, member in zip(entry["members"], spec["members"]):
            assert item["weight"] == member["weight"] and len(item["checkpoints"]) == len(member["checkpoint_paths"])
            for exported, source in zip(item["checkpoints"], member["checkpoint_paths"]):
                ckpt = read_checkpoint(source)
                assert item["input"] == {k: ckpt["config"][k] for k in
                                         ("image_source", "windows", "in_chans", "img_size", "mean", "std",
                                          "neighbours")}
                assert exported["file"].endswith(".safetensors") and exported["num_outputs"] == ckpt["num_outputs"]
                assert model["files"][exported["file"]] == sha256(shipped.model / exported["file"])
                weights = load_file(shipped.model / exported["file"])
                state = ckpt["ema"] or ckpt["model"]
                assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    assert sorted(p.name for p in shipped.model.iterdir()) == ["manifest.json", "model.json", "weights"]
    assert read_model_folder(shipped.model / "model.json").keys() == read_model_folder(shipped.model).keys()


def tampered(shipped, tmp_path, edit) -> object:
    folder = tmp_path / "full"
    shutil.copytree(shipped.model, folder)
    edit(folder)
    return folder


def flip_a_byte(folder) -> None:
    path = sorted((folder / "weights").glob("seg-*.safetensors"))[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: the file still parses, only the hash tells
    path.write_bytes(bytes(data))


def test_a_tampered_weight_file_is_refused(shipped, loop, tmp_path, capsys):
    folder = tampered(shipped, tmp_path, flip_a_byte)
    capsys.readouterr()
    status = run_main("infer", "--phase", 2, "--model", folder, "--data", loop.data / "YARISMA_2",
                      "--out", tmp_path / "sub", "--device", "cpu")
    err = capsys.readouterr().err
    assert status == 2 and "refused" in err and "weights/seg-" in err and "sha256" in err
    assert not (tmp_path / "sub").exists()
    with pytest.raises(ModelFolderError, match="sha256"):
        read_model_folder(folder)
    assert run_main("export", "--verify", folder) == 1 and run_main("export", "--verify", shipped.model) == 0


def test_an_edited_model_json_or_an_added_weights_file_is_refused(shipped, tmp_path):
    def lower_threshold(folder):
        model = json.loads((folder / "model.json").read_text())
        model["ensembles"]["stroke"]["threshold"]["value"] = 0.0
        (folder / "model.json").write_text(json.dumps(model))

    with pytest.raises(ModelFolderError, match="model.json: sha256 differs from manifest.json"):
        read_model_folder(tampered(shipped, tmp_path / "a", lower_threshold))
    with pytest.raises(ModelFolderError, match="weights/extra.safetensors: not listed"):
        read_model_folder(tampered(shipped, tmp_path / "b",
                                   lambda f: (f / "weights" / "extra.safetensors").write_bytes(b"x")))


def test_export_refuses_two_specs_of_one_role_and_an_existing_folder(shipped, stroke_spec, tmp_path, capsys):
    assert run_main("export", stroke_spec[0], stroke_spec[0], "--out", tmp_path / "two") == 2
    assert "same role 'stroke'" in capsys.readouterr().err and not (tmp_path / "two").exists()
    assert run_main("export", stroke_spec[0], "--out", shipped.model) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_main("export", stroke_spec[0])  # no --out
    assert exit_info.value.code == 2


def test_overwrite_replaces_a_model_folder_and_a_failed_export_leaves_nothing(shipped, stroke_spec, tmp_path, capsys):
    from strokekit.ensembling.spec import write_spec

    folder = tmp_path / "models" / "m"
    shutil.copytree(shipped.model, folder)
    assert run_main("export", stroke_spec[0], "--out", folder, "--overwrite") == 0
    assert set(read_model_folder(folder)) == {"stroke"} and run_main("export", "--verify", folder) == 0
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    spec = write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "bad", "checkpoints": ["bad.pt"], "weight": 1.0}]}, tmp_path / "bad.yaml")
    capsys.readouterr()
    assert run_main("export", spec, "--out", tmp_path / "models" / "bad") == 2
    assert "bad.pt" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m"]  # no half-written folder
