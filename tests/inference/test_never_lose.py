"""Never lose a byte: infer.py never writes into (or replaces) the data it reads, replaces only a folder its own
manifest.json vouches for, refuses a model folder nothing vouches for (no manifest.json, edited model.json; a
pinned manifest hash), and writes nothing before its inputs are checked. And one pipeline: Predictor and
infer.py give the same decisions for the same images."""
import ast
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from phantom_loop import run_main

from strokekit import Predictor
from strokekit.data.submission import mask_files, read_labels, read_phase2_mask
from strokekit.inference.manifest import sha256, write_manifest
from strokekit.inference.modelfolder import ModelFolderError
from strokekit.inference.submit import find_test_rows, prepare_out_dir
from strokekit.vocabulary import image_type

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ct_folder(tmp_path: Path) -> Path:
    """A test folder of the user's own CT images: PNG/<id>.png (no manifest)."""
    folder = tmp_path / "x"
    (folder / "PNG").mkdir(parents=True)
    for image_id in (3, 7, 11):
        (folder / "PNG" / f"{image_id}.png").write_bytes(bytes([image_id]) * 64)
    return folder


# --------------------------------------------------------------------------- 1. the input data is never an output


@pytest.mark.parametrize("where", ["PNG", ".", "..", "link"])
def test_an_output_folder_inside_equal_to_or_holding_the_data_is_refused(tmp_path, where):
    data = ct_folder(tmp_path)
    if where == "link":  # a symlink elsewhere that resolves to the images' folder
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "PNG").symlink_to(data / "PNG", target_is_directory=True)
        out = tmp_path / "elsewhere" / "PNG"
    else:
        out = data / where
    before = snapshot(tmp_path / "x")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="input data") as err:
            prepare_out_dir(out, overwrite, inputs=[data])
        assert "--overwrite" not in str(err.value)
    assert snapshot(tmp_path / "x") == before
    with pytest.raises(FileExistsError, match="input data"):  # a new folder inside the data: refused too
        prepare_out_dir(data / "PNG" / "sub", False, inputs=[data])
    assert not (data / "PNG" / "sub").exists()


def test_files_no_manifest_of_infer_vouches_for_are_never_replaced(tmp_path):
    data = ct_folder(tmp_path)
    elsewhere = tmp_path / "masks"  # the user's own masks, not inside --data: still never replaced
    shutil.copytree(data / "PNG", elsewhere)
    before = snapshot(elsewhere)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="did not write") as err:
            prepare_out_dir(elsewhere, overwrite, inputs=[data])
        assert "--overwrite" not in str(err.value)
    assert snapshot(elsewhere) == before
    write_manifest(elsewhere, {"written_by": "train.py"}, command=["train.py"])  # another script's manifest
    with pytest.raises(FileExistsError, match="did not write"):
        prepare_out_dir(elsewhere, True)
    write_manifest(elsewhere, {"written_by": "infer.py"}, command=["infer.py"])  # infer.py's: replaceable ...
    (elsewhere / "12.png").write_bytes(b"added later")  # ... but not a file it did not write
    (elsewhere / "3.png").write_bytes(b"edited")       # nor one changed since
    with pytest.raises(FileExistsError, match="never replaced") as err:
        prepare_out_dir(elsewhere, True)
    assert "--overwrite" not in str(err.value) and "12.png" in str(err.value) and "3.png" in str(err.value)
    assert (elsewhere / "12.png").read_bytes() == b"added later" and (elsewhere / "7.png").is_file()


def test_infer_out_in_the_data_folder_deletes_nothing(loop, stroke_spec, tmp_path, capsys):
    """`--data /x --out /x/PNG`: refused with or without --overwrite, every CT image kept (the old kit said
    "pass --overwrite", and with it deleted the images it was about to read)."""
    data = tmp_path / "x"
    shutil.copytree(loop.data / "YARISMA_1", data)
    before = snapshot(data)
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        status = run_main("infer", "--phase", 1, "--ensemble", stroke_spec[0], "--data", data,
                          "--out", data / "PNG", "--device", "cpu", *extra)
        err = capsys.readouterr().err
        assert status == 2 and "input data" in err and "--overwrite" not in err, err
        assert snapshot(data) == before
    link = tmp_path / "out_link"  # an --out that is a symlink to the data
    link.symlink_to(data, target_is_directory=True)
    assert run_main("infer", "--phase", 1, "--ensemble", stroke_spec[0], "--data", data, "--out", link,
                    "--device", "cpu", "--overwrite") == 2
    assert "input data" in capsys.readouterr().err and snapshot(data) == before


# --------------------------------------------------------------------------- 3. model folders nothing vouches for


def no_manifest_lower_threshold(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    model = json.loads((folder / "model.json").read_text())
    model["ensembles"]["stroke"]["threshold"]["value"] = 0.0
    (folder / "model.json").write_text(json.dumps(model))


def test_a_model_folder_without_its_manifest_is_refused_as_verify_refuses_it(shipped, loop, tmp_path, capsys):
    folder = tmp_path / "full"
    shutil.copytree(shipped.model, folder)
    no_manifest_lower_threshold(folder)
    capsys.readouterr()
    assert run_main("export", "--verify", folder) == 1
    verdict = capsys.readouterr().err
    assert verdict.startswith("INVALID model folder: ") and "manifest.json: missing" in verdict
    status = run_main("infer", "--phase", 1, "--model", folder, "--data", loop.data / "YARISMA_1",
                      "--out", tmp_path / "sub", "--device", "cpu")
    err = capsys.readouterr().err
    assert status == 2 and err.strip().removeprefix("error: ") == verdict.strip().removeprefix("INVALID model folder: ")
    assert not (tmp_path / "sub").exists()
    with pytest.raises(ModelFolderError, match="manifest.json: missing"):
        Predictor(folder, device="cpu")
    # a manifest that does not hash model.json (its entry dropped, the threshold edited) is refused too
    other = tmp_path / "other"
    shutil.copytree(shipped.model, other)
    manifest = json.loads((other / "manifest.json").read_text())
    del manifest["files"]["model.json"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="model.json: sha256 differs from manifest.json"):
        Predictor(other, device="cpu")


def test_expect_sha256_pins_the_manifest(shipped, loop, stroke_spec, tmp_path, capsys):
    capsys.readouterr()
    assert run_main("export", stroke_spec[0], "--out", tmp_path / "m") == 0  # export prints the hash to pin
    assert f"manifest.json sha256 {sha256(tmp_path / 'm' / 'manifest.json')}" in capsys.readouterr().out
    pinned = sha256(shipped.model / "manifest.json")
    assert Predictor(shipped.model, device="cpu", expect_sha256=pinned.upper()).pipeline.roles.keys() == \
        {"stroke", "seg", "type"}
    with pytest.raises(ModelFolderError, match="not the expected"):
        Predictor(shipped.model, device="cpu", expect_sha256="0" * 64)
    capsys.readouterr()
    status = run_main("infer", "--phase", 2, "--model", shipped.model, "--data", loop.data / "YARISMA_2",
                      "--out", tmp_path / "sub", "--device", "cpu", "--expect-sha256", "ab" * 32)
    assert status == 2 and "not the expected" in capsys.readouterr().err and not (tmp_path / "sub").exists()
    with pytest.raises(SystemExit) as exit_info:  # not a sha256 at all: a usage error
        run_main("infer", "--phase", 1, "--model", shipped.model, "--data", loop.data, "--expect-sha256", "xyz")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        run_main("infer", "--help")
    assert "integrity check" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- 11. nothing written before the checks


def test_a_spec_of_the_wrong_role_stops_before_anything_is_written(loop, stroke_spec, seg_spec, type_spec,
                                                                    tmp_path, capsys):
    cases = {"p2_stroke": (["--phase", 2, "--ensemble", stroke_spec[0]], "phase 2 needs a seg spec"),
             "p2_type_is_stroke": (["--phase", 2, "--ensemble", seg_spec[0], "--type-ensemble", stroke_spec[0]],
                                   "is a stroke spec, not a type spec"),
             "p1_type": (["--phase", 1, "--ensemble", type_spec], "phase 1 needs a stroke spec"),
             "p1_seg": (["--phase", 1, "--ensemble", seg_spec[0]], "phase 1 needs a stroke spec")}
    capsys.readouterr()
    for name, (args, message) in cases.items():
        test_dir = "YARISMA_2" if args[1] == 2 else "YARISMA_1"
        out = tmp_path / "deep" / name
        status = run_main("infer", *args, "--data", loop.data / test_dir, "--out", out, "--device", "cpu")
        err = capsys.readouterr().err
        assert not out.exists() and not (tmp_path / "deep").exists(), (name, err)
        assert status == 2 and message in err, (name, err)


# --------------------------------------------------------------------------- one pipeline


def test_predictor_and_infer_give_identical_decisions(shipped, loop):
    """Every decision infer.py wrote (asama1.txt, probs.csv, masks, types.csv) is what Predictor returns for
    the same images, given as the same index rows (so batched alike)."""
    predictor = Predictor(shipped.model, device="cpu", batch_size=8)
    rows, _ = find_test_rows(loop.data / "YARISMA_1", None, 1)
    results = predictor.predict(rows)
    sub = shipped.subs[("model", 1)]
    probs = pd.read_csv(sub / "probs.csv", converters={"prob": float})  # float(): exact
    labels = read_labels(sub / "asama1.txt")
    assert probs["image_id"].tolist() == rows["image_id"].tolist()
    assert [r.stroke_prob for r in results] == probs["prob"].tolist()
    assert [int(r.stroke) for r in results] == probs["label"].tolist() == [labels[i] for i in rows["image_id"]]
    rows, _ = find_test_rows(loop.data / "YARISMA_2", None, 2)
    results = predictor.predict(rows)
    sub = shipped.subs[("model", 2)]
    types = pd.read_csv(sub / "types.csv", converters={"p_hemorrhagic": float})
    masks = mask_files(sub)
    assert types["image_id"].tolist() == rows["image_id"].tolist() == sorted(masks)
    for result, (_, written) in zip(results, types.iterrows()):
        class_map = read_phase2_mask(masks[written["image_id"]])
        assert np.array_equal(result.class_map, class_map)
        assert result.type == written["type"] and result.fallback == bool(written["fallback"])
        assert result.type_probs["hemorrhagic"] == written["p_hemorrhagic"]
        assert image_type(result.class_map) == written["mask_type"]
        assert int(np.count_nonzero(result.class_map)) == written["lesion_pixels"]


def test_submit_and_predictor_assemble_no_decision_themselves():
    """The decisions live in pipeline.py: submit.py and predictor.py import none of the deciding modules."""
    deciding = {"strokekit.postprocess.decide", "strokekit.ensembling.seg_classifier", "strokekit.config.postprocess"}
    for name in ("submit", "predictor"):
        tree = ast.parse((ROOT / "strokekit" / "inference" / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & deciding, (name, imported & deciding)
        assert "strokekit.inference.submit" not in imported or name == "submit"
