"""leaderboard.py on runs trained here: per-task tables of every config's OOF metrics (per fold, mean ± std,
pooled AUC recomputed from the oof.csv files), the ensemble specs' figures, unfinished and pruned folds left
out and listed, and a PNG chart."""
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

import ensemble
import leaderboard
from strokekit.config import load_config, save_config
from strokekit.data.index import build_index
from strokekit.training.engine import train_fold
from strokekit.data.folds import make_folds, read_folds, write_folds
from strokekit.report.leaderboard import build, summary_table
from strokekit.phantom.dataset import make_phantom

CONFIGS = {"stroke_a": ["model=tiny_cnn", "seed=1"], "stroke_b": ["model=tiny_cnn", "seed=2", "lr=3e-3"],
           "seg_a": ["task=seg", "model=tiny_unet", "loss=dice+ce", "oof_size=64"]}
GRID = {"threshold": [None, 0.5], "closing": [0], "min_area": [0], "keep_largest": [False], "overlap": ["argmax"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A phantom, three configs trained on 2 folds x 1 epoch, ensemble specs, a pruned and an unfinished run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loaded 2-core machine: two threads spin-wait for each other
    try:
        root = tmp_path_factory.mktemp("leaderboard")
        data = make_phantom(root / "data", n=48, seed=2, size=64, n_test1=2, n_test2=2)
        index, _ = build_index(data)
        write_folds(make_folds(index, n_folds=2, seed=0), Path(data) / "folds.csv")
        folds = read_folds(Path(data) / "folds.csv", index)
        for name, sets in CONFIGS.items():
            cfg = load_config(None, [*sets, f"name={name}", "img_size=64", "epochs=1", "batch_size=8",
                                     "num_workers=0", f"data={data}"])
            for fold in (0, 1):  # as train.py does
                save_config(cfg, root / "runs" / name / f"fold{fold}" / "config.yaml")
                train_fold(cfg, index, folds, fold, root / "runs" / name / f"fold{fold}", progress=False,
                           log=lambda msg: None)
    finally:
        torch.set_num_threads(threads)
    (root / "grid.yaml").write_text(yaml.safe_dump(GRID))
    runs, specs = root / "runs", root / "ensembles"
    assert ensemble.main(["--task", "stroke", str(runs / "stroke_a"), str(runs / "stroke_b"), "--blend", "mean",
                          "--objective", "recall", "--target-recall", "0.9", "--out", str(specs / "stroke.yaml")]) == 0
    assert ensemble.main(["--task", "seg", str(runs / "seg_a"), "--grid", str(root / "grid.yaml"), "--data",
                          str(data), "--seg-classifier", "type", "--out", str(specs / "seg.yaml")]) == 0
    for name, marker in (("tuned_t0", "pruned"), ("half_done", None)):  # what tune.py / a killed run leave
        fold_dir = runs / name / "fold0"
        fold_dir.mkdir(parents=True)
        (fold_dir / "log.csv").write_text("epoch,train_loss\n1,0.5\n")
        if marker:
            (fold_dir / marker).write_text("pruned at epoch 1\n")
    return root


def summaries(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("fold*/summary.json"))]


def test_configs_per_task_with_mean_std_and_pooled_auc(trained):
    result = build([trained / "runs"], [], trained / "board")
    assert {r.name for r in result["runs"]} == set(CONFIGS)
    table = summary_table(result["runs"], "stroke")
    for _, row in table.iterrows():
        values = [s["final_metrics"]["auc"] for s in summaries(trained / "runs" / row["config"])]
        assert row["auc_mean"] == pytest.approx(statistics.mean(values))
        assert row["auc_std"] == pytest.approx(statistics.stdev(values))
        oof = pd.concat(pd.read_csv(p) for p in (trained / "runs" / row["config"]).glob("fold*/oof.csv"))
        assert row["pooled_auc_mean"] == pytest.approx(roc_auc_score(oof["target"], oof["prob"]))
        assert f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}" in result["markdown"]
    assert list(table["auc_mean"]) == sorted(table["auc_mean"], reverse=True)
    seg = summary_table(result["runs"], "seg").iloc[0]
    dice = [s["final_metrics"]["dice_macro_imagewise_lesion_mean"] for s in summaries(trained / "runs" / "seg_a")]
    assert seg["dice_macro_imagewise_lesion_mean_mean"] == pytest.approx(np.mean(dice))
    per_fold = pd.read_csv(trained / "board" / "leaderboard.csv")
    assert len(per_fold) == 6 and set(per_fold["task"]) == {"stroke", "seg"}
    assert result["markdown"].index("## stroke") < result["markdown"].index("## seg")


def test_unfinished_and_pruned_folds_are_listed_not_ranked(trained):
    result = build([trained / "runs"], [])
    assert "tuned_t0" not in {r.name for r in result["runs"]}
    left_out = "\n".join(result["skipped"])
    assert "tuned_t0: no finished fold" in left_out and "pruned by tune.py" in left_out
    assert "half_done: no finished fold" in left_out and "unfinished" in left_out


def test_ensemble_figures_come_from_the_specs(trained):
    specs = [trained / "ensembles" / "stroke.yaml", trained / "ensembles" / "seg.yaml"]
    result = build([trained / "runs" / n for n in CONFIGS], specs)
    stroke, seg = (yaml.safe_load(p.read_text()) for p in specs)
    rows = {(e["task"], e["ensemble"]): e for e in result["ensembles"]}
    assert rows["stroke", "stroke"]["oof"] == stroke["oof"]["ensemble"]
    assert rows["stroke", "stroke"]["recall"] == stroke["threshold"]["oof"]["recall"] >= 0.9
    assert rows["seg", "seg"]["oof"] == seg["oof"]["postprocessed"]
    seg_based = rows["type", "seg (seg-based)"]  # the seg spec's type classifier sits in the type table
    assert seg_based["threshold"] == seg["seg_classifier"]["threshold"]["threshold"]
    assert "## type" in result["markdown"] and "seg (seg-based)" in result["markdown"]


def test_cli_writes_markdown_and_chart(trained, capsys):
    out = trained / "cli"
    assert leaderboard.main([str(trained / "runs"), "--ensembles", str(trained / "ensembles" / "stroke.yaml"),
                             "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Leaderboard") and (out / "leaderboard.md").read_text().strip() in printed
    image = np.asarray(Image.open(out / "leaderboard.png").convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 600 and image.std() > 10  # two panels drawn
    assert leaderboard.main([str(trained / "runs" / "half_done"), "--out", str(out)]) == 2
    assert "nothing to rank" in capsys.readouterr().err
