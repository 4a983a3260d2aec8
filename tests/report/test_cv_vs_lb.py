"""leaderboard.py --scores on the phantom loop (tests/phantom_loop.py): each scored submission joined, through
the manifest.json infer.py wrote, with the spec it was made from (a model folder's submission with the spec it
was exported from): CV (the spec's OOF figure and interval) beside LB (score.py's), the git commit and time, a
flag where they disagree or the spec changed; and one merged oof.csv / oof.npz per run. The flag rule itself:
test_flag_rule (quick)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from phantom_loop import run_main
from strokekit.report import cv_lb
from strokekit.report.leaderboard import build


def score(sub, phase, truth, out):
    pred = sub / "asama1.txt" if phase == 1 else sub
    extra = ["--probs", sub / "probs.csv"] if phase == 1 else []
    assert run_main("score", "--phase", phase, "--pred", pred, "--truth", truth, *extra, "--n-boot", 200,
                    "--out", out) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_leaderboard_joins_cv_and_lb(loop, stroke_spec, seg_spec, shipped, tmp_path):
    scores = tmp_path / "scores"
    key = loop.data / "YARISMA_1" / "ASAMA1_Cevaplar.txt"
    lb1 = score(shipped.subs[("spec", 1)], 1, key, scores / "spec_p1.json")
    score(shipped.subs[("model", 1)], 1, key, scores / "model_p1.json")
    lb2 = score(shipped.subs[("spec", 2)], 2, loop.data / "YARISMA_2" / "MASK", scores / "spec_p2.json")
    changed = tmp_path / "changed_p1"  # a submission whose spec was edited after it was made
    shutil.copytree(shipped.subs[("spec", 1)], changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["spec"]["sha256"] = "0" * 64
    (changed / "manifest.json").write_text(json.dumps(manifest))
    score(changed, 1, key, scores / "changed_p1.json")
    (scores / "junk.json").write_text("[1, 2]")

    out = tmp_path / "lb"
    result = build([loop.runs], [stroke_spec[0], seg_spec[0]], out, [scores])
    table = pd.DataFrame(result["cv_vs_lb"])
    assert sorted(set(table["submission"])) == ["changed_p1", "model_p1", "spec_p1", "spec_p2"]
    assert any("junk.json: not a score file" in s for s in result["skipped"])

    spec1 = yaml.safe_load(stroke_spec[0].read_text())
    ours = table[table["submission"] == "spec_p1"].set_index("metric")
    for metric in ("balanced_accuracy", "auc"):  # CV from the spec, LB from the score file, both with intervals
        cv, lb = spec1["oof"]["intervals"][metric], lb1["intervals"][metric]
        row = ours.loc[metric]
        assert (row["cv"], row["cv_low"], row["cv_high"]) == pytest.approx((cv["estimate"], cv["low"], cv["high"]))
        assert (row["lb"], row["lb_low"], row["lb_high"]) == pytest.approx((lb["estimate"], lb["low"], lb["high"]))
        assert row["lb_minus_cv"] == pytest.approx(lb["estimate"] - cv["estimate"])
        outside = not cv["low"] <= lb["estimate"] <= cv["high"]
        assert bool(row["flag"]) == outside
    made = json.loads((shipped.subs[("spec", 1)] / "manifest.json").read_text())
    assert set(ours["commit"]) == {(made["git"]["commit"] or "")[:10] + ("+dirty" if made["git"]["dirty"] else "")
                                   or "–"}
    assert set(ours["made"]) == {made["time"]} and set(ours["spec"]) == {"stroke"}
    member_names = [m["name"] for m in spec1["members"]]
    assert all(name in ours["members"].iloc[0] for name in member_names)
    assert "auc 0." in ours["members"].iloc[0]  # each member config's own OOF figure beside it

    via_folder = table[table["submission"] == "model_p1"].set_index("metric")  # exported_from -> the same spec
    assert set(via_folder["spec"]) == {"stroke"}
    assert via_folder.loc["auc", "cv"] == pytest.approx(ours.loc["auc", "cv"])
    assert all("spec changed since the submission" in f for f in table[table["submission"] == "changed_p1"]["flag"])
    assert not any("spec changed" in str(f) for f in ours["flag"])

    seg = table[table["submission"] == "spec_p2"].set_index("metric")
    spec2 = yaml.safe_load(seg_spec[0].read_text())
    row = seg.loc["dice_macro_imagewise_lesion_mean"]
    assert row["cv"] == pytest.approx(spec2["oof"]["postprocessed"])
    assert row["cv_low"] == pytest.approx(spec2["oof"]["postprocessed_interval"]["low"])
    assert row["lb"] == pytest.approx(lb2["intervals"]["dice_macro_imagewise_lesion_mean"]["estimate"])
    assert seg.loc["official_iou", "lb"] == pytest.approx(lb2["official"]["mean_imagewise"]["iou"])

    text = (out / "leaderboard.md").read_text()
    assert "## CV vs LB" in text and "spec_p1" in text
    assert len(pd.read_csv(out / "cv_vs_lb.csv")) == len(table)

    for run in sorted(loop.runs.iterdir()):  # one merged OOF per run, holding every fold's rows
        folds = sorted(run.glob("fold*/oof.*"))
        merged = run / folds[0].name
        if merged.suffix == ".csv":
            expected = pd.concat(pd.read_csv(f) for f in folds).sort_values("image_id")
            assert pd.read_csv(merged)["image_id"].tolist() == expected["image_id"].tolist()
        else:
            with np.load(merged) as data:
                assert sorted(set(data["fold"].tolist())) == list(range(len(folds)))
                assert len(data["image_id"]) == sum(len(np.load(f)["image_id"]) for f in folds)


def test_flag_rule():
    cv = {"estimate": 0.80, "low": 0.75, "high": 0.85}
    assert cv_lb.flag(cv, 0.80, {"estimate": 0.70, "low": 0.6, "high": 0.8}) == "LB below CV interval"
    assert cv_lb.flag(cv, 0.80, {"estimate": 0.90}) == "LB above CV interval"
    assert cv_lb.flag(cv, 0.80, {"estimate": 0.76, "low": 0.5, "high": 0.9}) == ""
    assert cv_lb.flag(None, 0.80, {"estimate": 0.70, "low": 0.65, "high": 0.75}) == "CV outside LB interval"
    assert cv_lb.flag(None, 0.80, {"estimate": 0.75, "low": 0.70, "high": 0.85}) == ""
