"""strokekit/locks.py: one writer per folder. A second process is refused while the first holds a folder's
lock, told who holds it; a SIGKILLed holder leaves no stale lock. export.py and infer.py's output folders
are locked too (train.py's fold folders:
tests/training/test_train.py::test_a_second_run_on_a_fold_folder_is_refused)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strokekit.locks import FolderLock, FolderLockedError, hold_folder, lock_file

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from strokekit.locks import FolderLock
lock = FolderLock(sys.argv[1], what="test run", beside=sys.argv[2] == "beside").acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(folder: Path, beside: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "beside" if beside else "inside"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def holder(tmp_path):
    procs = []
    yield lambda folder, beside=False: procs.append(start_holder(folder, beside)) or procs[-1]
    for proc in procs:
        if proc.poll() is None:
            kill(proc)


def test_a_second_process_is_refused_naming_the_holder(tmp_path, holder):
    folder = tmp_path / "run"
    first = holder(folder)
    info = json.loads(lock_file(folder).read_text())
    assert info["pid"] == first.pid and info["host"] == socket.gethostname() and info["started"]
    with pytest.raises(FolderLockedError, match=rf"{folder} is in use by another test run: pid {first.pid} on "
                                                rf"{socket.gethostname()}, started 20"):
        FolderLock(folder).acquire()
    second = subprocess.run([sys.executable, "-c", HOLD, str(folder), "inside"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert second.returncode != 0 and f"pid {first.pid}" in second.stderr and "held" not in second.stdout


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path, holder):
    folder = tmp_path / "run"
    first = holder(folder)
    kill(first)
    assert lock_file(folder).exists()  # its file stays behind, unlocked
    with FolderLock(folder, what="next run"):
        assert json.loads(lock_file(folder).read_text())["pid"] == os.getpid()
        third = subprocess.run([sys.executable, "-c", HOLD, str(folder), "inside"], capture_output=True,
                               text=True, cwd=ROOT, timeout=60)
        assert third.returncode != 0 and f"another next run: pid {os.getpid()}" in third.stderr
    assert not lock_file(folder).exists()  # released: the file goes too
    holder(folder)  # and a new process takes it


def test_reentrant_within_a_process_and_released_when_dropped(tmp_path):
    folder = tmp_path / "run"
    with FolderLock(folder) as outer:
        with FolderLock(folder):
            pass
        assert lock_file(folder).exists() and outer.path == folder / ".lock"
    lock = FolderLock(folder).acquire()
    del lock  # garbage collected: released
    assert not lock_file(folder).exists()
    assert lock_file(folder, beside=True) == tmp_path / ".run.lock"


def test_export_refuses_a_locked_out_folder(tmp_path, holder, capsys):
    import export

    out = tmp_path / "models" / "m"
    first = holder(out, beside=True)
    assert export.main(["no_such_spec.yaml", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} is in use by another test run: pid {first.pid}")
    assert not out.exists()
    kill(first)
    assert export.main(["no_such_spec.yaml", "--out", str(out), "--overwrite"]) == 2  # the spec's error now
    assert "no_such_spec.yaml" in capsys.readouterr().err
    assert not lock_file(out, beside=True).exists()


def test_infer_out_folder_is_locked_until_the_process_ends(tmp_path, holder):
    from strokekit.inference.submit import prepare_out_dir

    out = tmp_path / "sub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    first = holder(out, beside=True)
    with pytest.raises(FolderLockedError, match=f"pid {first.pid}"):
        prepare_out_dir(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    kill(first)
    script = ("import sys, time; from strokekit.inference.submit import prepare_out_dir; "
              "prepare_out_dir(sys.argv[1], True); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"another infer.py run: pid {proc.pid}"):
            prepare_out_dir(out, overwrite=True)
    finally:
        kill(proc)
    assert prepare_out_dir(out, overwrite=True) == out  # this process holds it now, again and again
    assert prepare_out_dir(out, overwrite=True) == out


def test_a_normal_exit_deletes_a_held_lock_file(tmp_path):
    code = "import sys; from strokekit.locks import hold_folder; hold_folder(sys.argv[1], beside=True)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sub")], check=True, cwd=ROOT, timeout=60)
    assert not lock_file(tmp_path / "sub", beside=True).exists()
    assert hold_folder  # (the in-process form is test_infer_out_folder_is_locked_until_the_process_ends)


def test_the_lock_is_taken_on_the_file_at_the_path(tmp_path, holder):
    """A run that locked a file its holder deleted on release re-checks, and locks the new one."""
    folder = tmp_path / "run"
    first = FolderLock(folder).acquire()
    stale = os.open(lock_file(folder), os.O_RDWR)  # opened before the release, as a racing run would
    first.release()
    import fcntl

    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the old, deleted file's lock ...
    with FolderLock(folder):  # ... which is not the folder's lock
        assert lock_file(folder).exists()
    os.close(stale)
    time.sleep(0)
