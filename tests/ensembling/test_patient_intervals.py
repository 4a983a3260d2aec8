"""ensemble.py --test-patients N: the OOF intervals and the robust choice resample N whole patients (folds.csv's
groups), so the OOF's interval is the spread a test set of N patients shows."""
import shutil

import pandas as pd
import yaml

from tests.phantom_loop import run_main


def test_stroke_and_seg_specs_resample_whole_patients(loop, tmp_path, capsys):
    groups = pd.read_csv(loop.data / "folds.csv")
    for task, runs in (("stroke", ["stroke_a"]), ("seg", ["seg_a"])):
        out = tmp_path / f"{task}.yaml"
        assert run_main("ensemble", "--task", task, *(loop.runs / r for r in runs), "--test-patients", 6,
                        "--n-boot", 200, "--out", out) == 0
        printed = capsys.readouterr().out
        spec = yaml.safe_load(out.read_text())
        if task == "stroke":
            intervals = spec["oof"]["intervals"]
            assert spec["threshold"]["test_patients"] == 6
            assert "6 whole patients" in printed
            oof_ids = pd.concat(pd.read_csv(f) for f in sorted((loop.runs / "stroke_a").glob("fold*/oof.csv")))
        else:
            intervals = {"postprocessed": spec["oof"]["postprocessed_interval"]}
            assert spec["postprocess_search"]["test_patients"] == 6
            assert "at 6 patients" in printed
            oof_ids = None
        nested = spec["oof"]["nested"]  # the forecast: each fold tuned on the other fold, by patient too
        for value in [*intervals.values(), *(nested["figures"].values() if task == "stroke" else [nested])]:
            assert value["patients"] == 6 and value["low"] <= value["estimate"] <= value["high"]
        assert len(nested["thresholds" if task == "stroke" else "settings"]) == 2 and "nested OOF" in printed
        if oof_ids is not None:  # the patients are those of the OOF images, from folds.csv
            assert value["n_patients"] == groups.set_index("image_id").loc[oof_ids["image_id"], "group"].nunique()


def test_folds_without_patients_are_refused(loop, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(loop.data, data, ignore=shutil.ignore_patterns("*.dcm", "*.png"))
    folds = pd.read_csv(data / "folds.csv")
    folds["group"] = "image-" + folds["image_id"].astype(str)  # what kfold.py writes without DICOM ids
    folds.to_csv(data / "folds.csv", index=False)
    assert run_main("ensemble", "--task", "stroke", loop.runs / "stroke_a", "--data", data, "--test-patients", 6,
                    "--out", tmp_path / "s.yaml") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --test-patients") and "no DICOM patient ids" in err
    assert not (tmp_path / "s.yaml").exists()
