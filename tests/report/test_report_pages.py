"""report.py and score.py --report on the phantom loop (tests/phantom_loop.py; no training here): an ensemble's
page compares every member with the blend (weights, runs kept by --top-runs, leave-one-out deltas recomputed
here from the OOF files), shows ensemble.py's and score.py's bootstrap intervals, counts as integers, and the
classifier's false negatives and false positives as separate galleries."""
import html
import json
import re

import numpy as np
import pytest
import yaml

from phantom_loop import run_main
from strokekit.ensembling import selection
from strokekit.evaluation import metrics


def cells(text: str) -> list[str]:
    return [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", text)]


def row_of(text: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for row in re.findall(r"<tr>(.*?)</tr>", text):
        found = cells(row)
        if found and found[0] == first:
            return found
    raise AssertionError(f"no row starting {first!r}")


@pytest.mark.slow
def test_ensemble_page_members_intervals_and_counts(loop, seg_spec, tmp_path):
    both, top1 = tmp_path / "both.yaml", tmp_path / "top1.yaml"
    runs = [loop.runs / "stroke_a", loop.runs / "stroke_b"]
    assert run_main("ensemble", "--task", "stroke", *runs, "--blend", "mean", "--keep-blend", "--out", both) == 0
    assert run_main("ensemble", "--task", "stroke", *runs, "--top-runs", 1, "--out", top1) == 0
    out = tmp_path / "page.html"
    assert run_main("report", both, top1, seg_spec[0], "--data", loop.data, "--out", out, "--worst", 2) == 0
    text = out.read_text(encoding="utf-8")
    both_part, top_part, seg_part = text.split("<h2 ")[1:]  # one h2 section per source

    oofs = {r.name: selection.load_oof(r) for r in runs}  # leave-one-out, recomputed from the OOF files
    aligned = selection.align_members(oofs)
    y = aligned["target"].to_numpy()
    alone = {n: metrics.roc_auc(y, aligned[n].to_numpy()) for n in oofs}
    blend = metrics.roc_auc(y, (aligned["stroke_a"].to_numpy() + aligned["stroke_b"].to_numpy()) / 2)
    for name, other in (("stroke_a", "stroke_b"), ("stroke_b", "stroke_a")):
        row = row_of(both_part, name)  # member, kept, weight, OOF, blend without it, delta
        assert row[1] == "yes" and float(row[3]) == pytest.approx(alone[name], abs=1e-4)
        assert float(row[4]) == pytest.approx(alone[other], abs=1e-4)
        assert float(row[5]) == pytest.approx(alone[other] - blend, abs=1e-4)
    assert float(row_of(both_part, "BLEND")[3]) == pytest.approx(blend, abs=1e-4)

    spec = yaml.safe_load(top1.read_text())  # --top-runs 1: the run left out is listed, not blended
    kept = spec["selection"]["runs_kept"]
    dropped = next(n for n in ("stroke_a", "stroke_b") if n not in kept)
    assert row_of(top_part, dropped)[1] == "no (top-runs)" and row_of(top_part, kept[0])[1] == "yes"
    auc = spec["oof"]["intervals"]["auc"]  # ensemble.py's bootstrap interval, in the page
    assert f"{auc['estimate']:.4f} [{auc['low']:.4f}, {auc['high']:.4f}]" in row_of(top_part, "auc")[1]

    for fold in (0, 1):  # counts as integers: n and positives per fold
        part = oofs["stroke_a"]
        n, positives = int((part["fold"] == fold).sum()), int(part.loc[part["fold"] == fold, "target"].sum())
        assert row_of(both_part, str(fold))[1:3] == [str(n), str(positives)]
    assert re.fullmatch(r"\d+(\.\d)? ± \d+(\.\d)?", row_of(seg_part, "mean ± std")[1])  # n_lesion: 42 ± 4.2
    alts = re.findall(r'alt="([^"]+)"', both_part)
    assert "members and blend" in alts and "worst cases" not in alts
    assert {"false negatives", "false positives"} & set(alts)

    assert row_of(seg_part, "BLEND") and "dice post-processed" in seg_part
    interval = yaml.safe_load(seg_spec[0].read_text())["oof"]["postprocessed_interval"]
    assert f"{interval['estimate']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]" in seg_part


@pytest.mark.slow
def test_submission_pages_show_score_intervals(loop, shipped, tmp_path):
    sub1, sub2 = shipped.subs[("spec", 1)], shipped.subs[("spec", 2)]
    out1, out2 = tmp_path / "p1.json", tmp_path / "p2.json"
    assert run_main("score", "--phase", 1, "--pred", sub1 / "asama1.txt", "--truth",
                    loop.data / "YARISMA_1" / "ASAMA1_Cevaplar.txt", "--probs", sub1 / "probs.csv", "--report",
                    "--images", loop.data / "YARISMA_1" / "PNG", "--n-boot", 100, "--out", out1) == 0
    assert run_main("score", "--phase", 2, "--pred", sub2, "--truth", loop.data / "YARISMA_2" / "MASK", "--report",
                    "--images", loop.data / "YARISMA_2" / "PNG", "--n-boot", 100, "--out", out2) == 0
    for out in (out1, out2):
        result = json.loads(out.read_text())
        page = out.with_suffix(".report.html").read_text(encoding="utf-8")
        for name, value in result["intervals"].items():
            assert row_of(page, name)[1] == f"{value['estimate']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"
    page1 = out1.with_suffix(".report.html").read_text(encoding="utf-8")
    assert "<td>" + str(json.loads(out1.read_text())["confusion"]["fp"]) + "</td>" in page1  # an integer count
