"""report.py and write_submission_report: one HTML file that parses, embeds every image (data: URIs, nothing
external) and holds the listed figures and sections, for a classifier run, a seg ensemble, several sources
at once, and a scored submission of each phase. Runs are trained here: two tiny configs, 2 epochs, 2 folds."""
import base64
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import ensemble
import report
import train
from strokekit.evaluation import metrics, score as scoring
from strokekit.report.submission import write_submission_report
from strokekit.data.submission import mask_files, read_labels, read_phase2_mask, write_phase1, write_phase2
from conftest import small_phantom

TINY = {"num_workers": 0, "img_size": 32, "epochs": 2, "batch_size": 16, "aug": {"shift_scale_rotate": 0.0}}
CONFIGS = {"cls": {"task": "stroke", "model": "tiny_cnn"},
           "seg": {"task": "seg", "model": "tiny_unet", "oof_size": 32, "loss": "ce", "batch_size": 8,
                   "class_weights": [1.0, 30.0, 30.0], "seg_val_negatives": True}}
GRID = {"threshold": [None, 0.3, 0.5], "min_area": [0, 16], "closing": [0], "keep_largest": [False],
        "overlap": ["argmax"]}


class Page(HTMLParser):
    """Every tag with its attributes, and the text of each h2 / h3 heading."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.headings, self._heading = [], [], None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("h2", "h3"):
            self._heading = ""

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append(self._heading)
            self._heading = None


def read_page(path: Path) -> Page:
    page = Page(path.read_text(encoding="utf-8"))
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert images
    for attrs in images:  # every image embedded, and a real PNG
        assert attrs["src"].startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).verify()
    linked = [(tag, attrs) for tag, attrs in page.tags if tag in ("script", "link", "iframe", "object", "embed")
              or (tag == "a" and not attrs.get("href", "#").startswith("#"))]
    assert not linked, linked
    return page


def alts(page: Page) -> list[str]:
    return [attrs.get("alt") for tag, attrs in page.tags if tag == "img"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("report")
    data = small_phantom(root, n=60, seed=5, size=64, n_test1=8, n_test2=6)
    for name, cfg in CONFIGS.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**TINY, **cfg, "name": name, "data": str(data)}), encoding="utf-8")
        assert train.main(["--config", str(path), "--fold", "all", "--out", str(root / "runs"), "--no-progress"]) == 0
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID), encoding="utf-8")
    spec = root / "ensembles" / "seg.yaml"
    assert ensemble.main(["--task", "seg", str(root / "runs" / "seg"), "--grid", str(root / "grid.yaml"),
                          "--out", str(spec)]) == 0
    assert ensemble.main(["--task", "stroke", str(root / "runs" / "cls"), "--objective", "youden",
                          "--out", str(root / "ensembles" / "cls.yaml")]) == 0
    return root, data, spec


def test_classifier_run_report(trained, capsys):
    root, data, _ = trained
    out = root / "cls.html"
    assert report.main([str(root / "runs" / "cls"), "--data", str(data), "--out", str(out), "--worst", "4"]) == 0
    page = read_page(out)
    for heading in ("training curves per fold", "OOF metrics per fold", "confusion matrix, ROC and precision-recall",
                    "threshold search", "per class by lesion size", "false positives on no-stroke slices",
                    "worst 4 OOF cases"):
        assert heading in page.headings
    shown = alts(page)
    assert shown[:6] == ["training curves", "confusion matrix", "ROC and PR curves",
                         "probability histograms and calibration", "threshold surface", "size bins"]
    assert shown[6:] and set(shown[6:]) <= {"false negatives", "false positives"}  # the errors, apart
    text = out.read_text(encoding="utf-8")
    oof = pd.concat(pd.read_csv(root / "runs" / "cls" / f"fold{k}" / "oof.csv") for k in (0, 1))
    for k in (0, 1):  # the per-fold AUC, recomputed from the OOF file, is in the table; so is mean ± std
        part = oof[oof["fold"] == k]
        assert f"<td>{metrics.roc_auc(part['target'], part['prob']):.4f}</td>" in text
    assert "mean ± std" in text
    negatives = int((oof["target"] == 0).sum())
    assert re.search(rf"<td>mean ± std</td><td>{negatives / 2:.1f}".removesuffix(".0") + " ± ", text)  # no-stroke slices


def test_seg_ensemble_and_several_sources(trained):
    root, data, spec = trained
    assert report.main([str(spec), "--data", str(data)]) == 0
    page = read_page(spec.with_suffix(".report.html"))
    for heading in ("training curves per fold", "OOF metrics per fold", "image-type confusion", "threshold search",
                    "per class by lesion size", "false positives on no-stroke slices", "worst 8 OOF cases"):
        assert heading in page.headings
    assert alts(page) == ["training curves", "members and blend", "lesion probability histograms",
                          "type confusion matrix", "threshold surface", "size bins", "worst cases"]
    text = spec.with_suffix(".report.html").read_text(encoding="utf-8")
    assert "no-stroke slices with any predicted lesion pixel" in text  # seg_val_negatives: measured
    out = root / "all.html"  # a folder of runs and a classifier spec: one page, a part for each
    stroke_spec = root / "ensembles" / "cls.yaml"
    assert report.main([str(root / "runs"), str(stroke_spec), "--data", str(data), "--out", str(out),
                        "--worst", "2"]) == 0
    page = read_page(out)
    assert [h for h in page.headings if "task" in h] == ["cls (run, task stroke)", "seg (run, task seg)",
                                                          "cls (ensemble, task stroke)"]
    text = out.read_text(encoding="utf-8")
    assert alts(page).count("threshold surface") == 3 and "(a small grid on this run" in text
    threshold = yaml.safe_load(stroke_spec.read_text(encoding="utf-8"))["threshold"]["value"]
    assert html.escape(f"decision threshold {threshold:.4f}: the spec's threshold (youden on OOF)") in text


def test_bad_paths_fail_in_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    (tmp_path / "x.yaml").write_text("a: 1\n")
    assert report.main([str(tmp_path / "x.yaml")]) == 2
    assert "not an ensemble spec" in capsys.readouterr().err


def test_submission_reports(trained):
    root, data, _ = trained
    truth = {i: read_phase2_mask(p) for i, p in mask_files(data / "YARISMA_2" / "MASK").items()}
    shifted = {i: np.roll(m, 3, axis=1) if n % 2 else m for n, (i, m) in enumerate(truth.items())}
    write_phase2(root / "sub2", shifted, size=None)
    result = scoring.score_phase2(root / "sub2", data / "YARISMA_2" / "MASK")
    out = write_submission_report(result, root / "sub2.html", images_dir=data / "YARISMA_2" / "PNG", worst=4)
    page = read_page(out)
    assert {"metrics", "image-type confusion", "per class by lesion size", "worst 4 images"} <= set(page.headings)
    assert alts(page) == ["type confusion matrix", "size bins", "worst cases"]
    key = read_labels(data / "YARISMA_1" / "ASAMA1_Cevaplar.txt")
    ids = sorted(key)
    probs = np.clip(np.array([key[i] for i in ids]) * 0.4 + np.linspace(0, 0.6, len(ids)), 0, 1)
    (root / "sub1").mkdir()
    write_phase1(root / "sub1" / "asama1.txt", ids, (probs >= 0.5).astype(int))
    pd.DataFrame({"image_id": ids, "prob": probs}).to_csv(root / "sub1" / "probs.csv", index=False)
    result = scoring.score_phase1(root / "sub1" / "asama1.txt", data / "YARISMA_1" / "ASAMA1_Cevaplar.txt",
                                  root / "sub1" / "probs.csv")
    out = write_submission_report(result, root / "sub1.html", images_dir=data / "YARISMA_1" / "PNG",
                                  probs_csv=root / "sub1" / "probs.csv", worst=4)
    page = read_page(out)
    assert {"confusion matrix", "false positives on no-stroke slices", "ROC and precision-recall"} <= set(page.headings)
    assert alts(page)[:3] == ["confusion matrix", "ROC and PR curves", "threshold curve"]
    assert set(alts(page)[3:]) <= {"false negatives", "false positives"}
    c = result["confusion"]
    assert f"<td>{c['fp'] / (c['fp'] + c['tn']):.4f}</td>" in out.read_text(encoding="utf-8")
