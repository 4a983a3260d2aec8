"""strokekit/progress.py: a bar (with its ETA) is drawn on a terminal, nothing at all in a pipe or a file, and
--no-progress turns it off; every script with a bar takes --no-progress."""
import importlib
import io
import os
import subprocess
import sys
import textwrap

import pytest

from strokekit import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def bars_on():
    progress.set_enabled(True)
    yield
    progress.set_enabled(True)


def test_a_bar_is_drawn_on_a_terminal_with_count_and_eta():
    stream = Terminal()
    assert list(progress.bar(range(7), desc="search", unit="image", stream=stream, mininterval=0)) == list(range(7))
    drawn = stream.getvalue()
    assert "search" in drawn and "7/7" in drawn and "<" in drawn  # tqdm's [elapsed<remaining]


def test_nothing_is_written_to_a_pipe_or_when_switched_off():
    pipe = io.StringIO()
    assert list(progress.bar(range(7), desc="search", stream=pipe)) == list(range(7))
    assert pipe.getvalue() == ""
    terminal = Terminal()
    list(progress.bar(range(7), desc="search", stream=terminal, show=False))
    progress.set_enabled(False)  # --no-progress
    list(progress.bar(range(7), desc="search", stream=terminal))
    with progress.bar(total=3, stream=terminal) as counter:
        counter.update(3)
    assert terminal.getvalue() == ""


CHILD = textwrap.dedent("""
    import sys
    from strokekit.progress import bar
    for _ in bar(range(5), desc="grouping", unit="image", mininterval=0):
        pass
    print("done")
""")


def test_a_real_terminal_gets_the_bar_and_a_real_pipe_does_not():
    """The same child process: stderr on a pseudo-terminal draws the bar; stderr into a pipe stays empty."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    env = {**os.environ, "PYTHONPATH": ROOT}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a bare pty is 0 x 0: no bar
    drawn = []

    def read_terminal():  # as the child writes: the terminal's buffer goes when its last writer closes
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the other end closed: all read
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=slave, env=env,
                              timeout=60)
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    drawn = b"".join(drawn)
    assert proc.returncode == 0 and b"grouping" in drawn and b"5/5" in drawn
    piped = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, env=env, timeout=60)
    assert piped.returncode == 0 and piped.stderr == b"" and piped.stdout == b"done\n"


SCRIPTS = {  # every script with a bar, with the least it needs to parse
    "train": [], "infer": ["--phase", "1"], "ensemble": ["runs/a", "--task", "stroke"], "report": ["runs/a"],
    "kfold": ["--data", "data"], "make_phantom": ["--out", "data"], "prepare": [],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_with_a_bar_takes_no_progress(script):
    module = importlib.import_module(f"strokekit.cli.{script}")
    assert module.parse_args([*SCRIPTS[script], "--no-progress"]).no_progress is True
    assert module.parse_args(SCRIPTS[script]).no_progress is False
