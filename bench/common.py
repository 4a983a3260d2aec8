"""What the speed benchmarks share: the phantom they run on, bench checkpoints and spec, the machine's
description, and the JSON they write under bench/results/."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "strokekit_bench"
MODELS = {  # the two architectures the issue names, at their usual sizes
    "resnet18@224": ["task=stroke", "model=resnet18", "img_size=224"],
    "unet_r34@256": ["task=seg", "model=Unet", "encoder=resnet34", "img_size=256"],
}


def phantom(work: Path, n_train: int = 320, n_test: int = 100) -> Path:
    """A 512-px phantom (the real data's size) under work/, made once and reused."""
    from strokekit.phantom.dataset import TRUTH_CSV, make_phantom

    root = work / f"phantom_{n_train}_{n_test}"
    if not (root / TRUTH_CSV).is_file():
        print(f"making the phantom: {n_train} training + {n_test} + {n_test} test slices at 512 px -> {root}")
        make_phantom(root, n=n_train, n_test1=n_test, n_test2=n_test, size=512, overwrite=root.exists())
    return root


def bench_config(model: str, *sets: str, **values) -> dict:
    from strokekit.config import load_config

    cfg = load_config(None, [*MODELS[model], *sets])
    cfg.update(values)
    return cfg


def save_checkpoints(cfg: dict, folder: Path, n: int = 2) -> list[str]:
    """n randomly initialised checkpoints of cfg's model (non-trivial BatchNorm statistics, so eval mode
    matters); their weights are what an ensemble of n folds would load."""
    import torch

    from strokekit.models.checkpoint import build_checkpoint, save_atomic
    from strokekit.models.registry import build_model, head_size

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_model(cfg)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        path = folder / f"{cfg['task']}_{cfg['model']}_{seed}.pt"
        save_atomic(build_checkpoint(model, cfg, head_size(cfg["task"]), epoch=1), path)
        paths.append(str(path))
    return paths


def write_bench_spec(task: str, checkpoints: list[str], flips: list[str], path: Path) -> str:
    """An ensemble spec with one member per checkpoint (2 models = 2 members), mean blend."""
    from strokekit.ensembling.spec import checkpoint_ref, write_spec

    members = [{"name": f"m{i}", "checkpoints": [checkpoint_ref(c, path)], "weight": 1.0, "threshold": 0.5}
               for i, c in enumerate(checkpoints)]
    decision = {"postprocess": {}} if task == "seg" else {"threshold": {"value": 0.5}}
    return str(write_spec({"task": task, "blend": "mean", "tta": flips, "members": members, **decision}, path))


def machine(note: str = "") -> dict:
    """The machine and its load: figures from a shared box say so."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(mem, 1) if mem else None, "python": platform.python_version(),
            "torch": torch.__version__, "load_average_start": list(os.getloadavg()), "note": note,
            "git_commit": _git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_result(name: str, result: dict) -> Path:
    result["machine"]["load_average_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {path.relative_to(ROOT)}")
    return path


def run(cmd: list, log: Path, env: dict | None = None) -> float:
    """A command (a bench's child: train.py, infer.py, ...) from the repository root, its output appended to
    `log`; the bench stops when it fails. Returns its wall seconds."""
    cmd = [str(part) for part in cmd]
    start = time.time()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.time() - start


def children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes (the bench's training runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def table(rows: list[list], header: list[str]) -> str:
    """A plain aligned text table."""
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def wait_for_quiet(max_load: float | None, timeout: float = 600.0) -> dict:
    """On a shared machine, wait (up to `timeout` s) until the 1-minute load average is <= max_load before
    a timed run; returns the load it started at, for the JSON. max_load None: no wait."""
    start = time.perf_counter()
    while max_load is not None and os.getloadavg()[0] > max_load and time.perf_counter() - start < timeout:
        time.sleep(5)
    return {"load_1min": round(os.getloadavg()[0], 2), "waited_s": round(time.perf_counter() - start, 1)}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
