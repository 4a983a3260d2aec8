"""train.py --seeds: one run per seed (runs/<name>_s<seed>/, its own OOF), ranked across by ensemble.py's top-k."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import train
from conftest import small_phantom
from phantom_loop import run_script_here as script  # main() in this process, from cwd: its stdout
from strokekit.evaluation.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on a busy 2-core runner


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("seeds")
    data = small_phantom(root, n=60, seed=5, size=48, n_test1=2, n_test2=2)
    (root / "s.yaml").write_text(yaml.safe_dump({
        "task": "stroke", "model": "tiny_cnn", "img_size": 32, "epochs": 2, "batch_size": 16, "num_workers": 0,
        "data": str(data), "name": "s", "oof_tta": ["none"]}), encoding="utf-8")
    out = script("train.py", "--config", root / "s.yaml", "--fold", "0", "--seeds", "3,4,5", "--out", root / "runs",
                 "--no-progress", cwd=root)
    return root, out


def test_each_seed_is_a_run_of_its_own(seeded):
    root, out = seeded
    for seed in (3, 4, 5):
        fold = root / "runs" / f"s_s{seed}" / "fold0"
        assert json.loads((fold / "summary.json").read_text())["seed"] == seed
        assert yaml.safe_load((fold / "config.yaml").read_text())["seed"] == seed
        assert (fold / "oof.csv").is_file() and (fold / "done").is_file()
    probs = [pd.read_csv(root / "runs" / f"s_s{s}" / "fold0" / "oof.csv")["prob"] for s in (3, 4, 5)]
    assert not probs[0].equals(probs[1])            # the seed changed the training
    assert "seed 4, fold 0" in out


def test_ensemble_keeps_the_top_k_runs_across_seeds(seeded):
    root, _ = seeded
    runs = [root / "runs" / f"s_s{s}" for s in (3, 4, 5)]
    auc = {r.name: roc_auc(*pd.read_csv(r / "fold0" / "oof.csv")[["target", "prob"]].T.values) for r in runs}
    spec_path = root / "top2.yaml"
    script("ensemble.py", "--task", "stroke", *runs, "--top-runs", 2, "--blend", "mean", "--keep-blend",
           "--out", spec_path, cwd=root)
    spec = yaml.safe_load(spec_path.read_text())
    kept = [m["name"] for m in spec["members"]]
    assert sorted(kept) == sorted(sorted(auc, key=auc.get)[-2:])     # the two best runs by OOF AUC
    assert spec["selection"]["runs_kept"] == sorted(kept) and spec["selection"]["top_runs"] == 2


def test_bad_seeds_are_refused_before_training(tmp_path, capsys):
    code = train.main(["--config", str(ROOT / "configs/tiny_stroke.yaml"), "--seeds", "1,x", "--data", str(tmp_path)])
    assert code == 2 and "--seeds" in capsys.readouterr().err
