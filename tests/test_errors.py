"""One room for errors: every error a user can cause is a strokekit.errors.UserError, which each script's
`script_main` prints as `error: <message>` with exit status 2 and no traceback; anything else is a bug and
raises with its traceback (a KeyError inside the kit is never printed as `error: 'x'`)."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ensemble
import infer
import kfold
import leaderboard
import report
import score
from helpers import write_png
from strokekit.config import ConfigError, load_config
from strokekit.errors import UserError, script_main
from strokekit.evaluation.bootstrap import robust_scores
from strokekit.ensembling.seg_search import normalise_grid
from strokekit.ensembling.selection import blend
from strokekit.ensembling.spec import write_spec
from strokekit.models.checkpoint import build_checkpoint, save_atomic
from strokekit.models.registry import ModelNameError, build_model
from strokekit.vocabulary import resolve_flips

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train.py", "infer.py", "ensemble.py", "score.py", "kfold.py", "make_phantom.py", "prepare.py", "tune.py",
           "leaderboard.py", "export.py", "export_nnunet.py", "report.py", "pseudo.py"]


def run_script(script: str, *args, patch: str = "") -> subprocess.CompletedProcess:
    """`python <script> args` in a fresh process; `patch` runs first (to plant a bug in the kit)."""
    code = (f"import runpy, sys\n{patch}\nsys.argv = [{script!r}, *{[str(a) for a in args]!r}]\n"
            f"runpy.run_path({script!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_user_errors_keep_their_old_bases_and_print_their_message_without_quotes():
    for err in (ConfigError("x"), ModelNameError("unknown model 'y'")):
        assert isinstance(err, UserError)
    assert isinstance(ConfigError("x"), ValueError) and isinstance(ModelNameError("m"), KeyError)
    assert str(ModelNameError("unknown model 'y'")) == "unknown model 'y'"  # KeyError would add quotes
    for bad in (lambda: resolve_flips(["bogus"]), lambda: resolve_flips([]),
                lambda: robust_scores(np.ones((2, 2)), "p3"), lambda: blend(np.ones((2, 3)), "median"),
                lambda: normalise_grid({"threshold": ["abc"]}), lambda: normalise_grid({"bogus": [1]})):
        with pytest.raises(UserError):
            bad()


def test_the_wrapper_returns_2_for_a_user_error_and_lets_a_bug_raise(capsys):
    @script_main
    def user(argv=None):
        raise ConfigError("epochs: expected an integer")

    @script_main
    def bug(argv=None):
        return {}["x"]

    assert user() == 2
    assert capsys.readouterr().err == "error: epochs: expected an integer\n"
    with pytest.raises(KeyError):
        bug()

    @script_main(interrupted="interrupted: run it again")
    def stopped(argv=None):
        raise KeyboardInterrupt

    assert stopped() == 130 and capsys.readouterr().err == "interrupted: run it again\n"
    with pytest.raises(KeyboardInterrupt):  # scripts without a note keep Python's own Ctrl-C
        script_main(stopped.__wrapped__)()


def test_every_script_uses_the_wrapper_and_lists_no_error_classes():
    for name in SCRIPTS:
        tree = ast.parse((ROOT / "strokekit" / "cli" / name).read_text(encoding="utf-8"))
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        decorators = [ast.unparse(d) for d in main.decorator_list]
        assert any(d.startswith("script_main") for d in decorators), f"{name}: main is not @script_main"
        caught = [ast.unparse(h.type) for n in ast.walk(main) if isinstance(n, ast.Try) for h in n.handlers if h.type]
        assert all(c == "SubmissionError" for c in caught), f"{name}: main catches {caught}"  # infer's verdict
        assert "USER_ERRORS" not in ast.unparse(tree)


def test_user_errors_of_ensemble_leaderboard_and_report_print_one_line(tmp_path, capsys):
    nothing = tmp_path / "nothing"
    broken = tmp_path / "runs" / "broken" / "fold0"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text('{"task": "stroke"}', encoding="utf-8")  # no model, fold, metrics
    cases = [
        (ensemble.main, ["--task", "stroke", str(nothing), "--tta", "bogus"], "unknown TTA flip(s) ['bogus']"),
        (ensemble.main, ["--task", "stroke", str(nothing)], "no fold<k>/oof.csv"),
        (ensemble.main, ["--task", "seg", str(nothing), "--grid", str(tmp_path / "grid.yaml")], "does not exist"),
        (leaderboard.main, [str(nothing), "--out", str(tmp_path / "lb")], "nothing to rank"),
        (leaderboard.main, [str(broken.parent), "--out", str(tmp_path / "lb")], "not a summary.json"),
        (report.main, [str(nothing)], "no such run folder"),
        (score.main, ["--check", str(tmp_path), "--expected-ids", "1,x"], "are not image ids"),
        (kfold.main, ["--data", str(tmp_path), "--folds", "1"], "--folds must be at least 2"),
    ]
    for main, argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)


def test_infer_with_an_unknown_tta_flip_is_a_user_error(tmp_path, monkeypatch, capsys):
    cfg = load_config(None, ["task=stroke", "model=tiny_cnn", "img_size=32"])
    ckpt = tmp_path / "runs" / "a" / "fold0" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    save_atomic(build_checkpoint(build_model(cfg), cfg, 2, epoch=1), ckpt)
    spec = write_spec({"task": "stroke", "blend": "mean", "tta": ["none"], "threshold": {"value": 0.5},
                       "members": [{"name": "m", "weight": 1.0, "checkpoints": ["../runs/a/fold0/best.pt"]}]},
                      tmp_path / "ensembles" / "s.yaml")
    for i in (1, 2):
        write_png(tmp_path / "YARISMA_1" / "PNG" / f"{i}.png", np.full((32, 32), 40 * i, np.uint8))
    monkeypatch.chdir(tmp_path)
    argv = ["--phase", "1", "--ensemble", str(spec), "--data", "YARISMA_1", "--device", "cpu", "--out", "sub"]
    assert infer.main(argv + ["--tta", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown TTA flip(s) ['bogus']" in err and err.count("\n") == 1
    assert not (tmp_path / "sub" / "asama1.txt").exists()


BUGS = {  # a KeyError planted in the kit function each script calls first
    "ensemble.py": "import strokekit.ensembling.classifiers as m\ndef boom(*a, **k): raise KeyError('planted')\n"
                   "m.read_runs = boom",
    "leaderboard.py": "import strokekit.report.leaderboard as m\ndef boom(*a, **k): raise KeyError('planted')\n"
                      "m.build = boom",
    "report.py": "import strokekit.report.runs as m\ndef boom(*a, **k): raise KeyError('planted')\n"
                 "m.write_report = boom",
}


@pytest.mark.parametrize("script", sorted(BUGS))
def test_a_bug_in_the_kit_exits_with_its_traceback(script, tmp_path):
    args = {"ensemble.py": ["--task", "stroke", tmp_path, "--out", tmp_path / "s.yaml"],
            "leaderboard.py": [tmp_path, "--out", tmp_path / "lb"], "report.py": [tmp_path]}[script]
    done = run_script(script, *args, patch=BUGS[script])
    assert done.returncode not in (0, 2), done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'planted'" in done.stderr
    assert "error: " not in done.stderr


def test_a_user_error_in_a_fresh_process_has_no_traceback(tmp_path):
    done = run_script("ensemble.py", "--task", "stroke", tmp_path, "--tta", "bogus")
    assert done.returncode == 2 and done.stderr.startswith("error: unknown TTA flip(s) ['bogus']")
    assert "Traceback" not in done.stderr


def test_damaged_oof_files_are_user_errors_naming_the_file(tmp_path):
    from strokekit.ensembling.selection import load_oof

    (tmp_path / "csv" / "fold0").mkdir(parents=True)
    (tmp_path / "csv" / "fold0" / "oof.csv").write_bytes(b"")
    (tmp_path / "npz" / "fold0").mkdir(parents=True)
    (tmp_path / "npz" / "fold0" / "oof.npz").write_bytes(b"PK\x03\x04 truncated")
    for run, name in (("csv", "oof.csv"), ("npz", "oof.npz")):
        with pytest.raises(UserError, match=f"{name}: not a readable"):
            load_oof(tmp_path / run)


@pytest.mark.parametrize("text", ["task: seg\nmembers: [\n", "task: !!python/object/apply:os.system ['touch {mark}']\n",
                                  "\xff\xfe not text"])
def test_a_malformed_or_tagged_spec_is_one_error_line_and_runs_nothing(tmp_path, text, capsys, monkeypatch):
    """infer.py's and tune.py's main() in this process, from the repository root as run_script runs them: the
    same script_main prints the error, and a YAML tag that ran would touch `mark` here as well. (A fresh
    process's exit path: test_a_user_error_in_a_fresh_process_has_no_traceback.)"""
    import tune

    monkeypatch.chdir(ROOT)
    mark = tmp_path / "ran"
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(text.format(mark=mark).encode("latin-1"))
    write_png(tmp_path / "test" / "PNG" / "1.png", np.zeros((32, 32), np.uint8))
    capsys.readouterr()
    code = infer.main([str(a) for a in ("--phase", "2", "--ensemble", spec, "--data", tmp_path / "test",
                                        "--out", tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {spec}: not a readable ensemble spec"), err
    assert "Traceback" not in err and not mark.exists() and not (tmp_path / "out").exists()
    space = tmp_path / "space.yaml"
    space.write_bytes(text.format(mark=mark).encode("latin-1"))
    code = tune.main([str(a) for a in ("--config", ROOT / "configs" / "tiny_stroke.yaml", "--space", space,
                                       "--data", tmp_path, "--trials", 1)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not mark.exists(), err
