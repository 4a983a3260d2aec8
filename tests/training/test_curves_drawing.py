"""curves.png is drawn after the first epoch, then at most every CURVES_EVERY_S seconds, and with every row when
the loop ends (engine.Curves): a drawing costs about as much as a tiny model's epoch."""
from pathlib import Path

import pytest

from strokekit.training import engine
from strokekit.training.engine import Curves


def test_drawn_first_then_throttled_then_complete(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(engine.time, "time", lambda: clock[0])
    rows, drawn = [], []
    curves = Curves(lambda r, metric, path: drawn.append(len(r)), rows, "auc", Path("curves.png"))
    for epoch in range(1, 8):
        rows.append({"epoch": epoch})
        curves.draw(final=False)
        clock[0] += 10.0  # 10 s epochs
    assert drawn == [1, 4, 7]  # epoch 1, then every 30 s
    curves.draw(final=True)
    assert drawn == [1, 4, 7]  # nothing new to draw
    rows.append({"epoch": 8})
    curves.draw(final=True)
    assert drawn[-1] == 8  # the end always draws the last rows


def test_a_failing_drawing_raises_unless_the_loop_is_ending_on_its_own_error():
    def broken(rows, metric, path):
        raise RuntimeError("matplotlib broke")

    curves = Curves(broken, [{"epoch": 1}], "auc", Path("curves.png"))
    with pytest.raises(RuntimeError, match="matplotlib"):
        curves.draw(final=True)
    curves.draw(final=True, quiet=True)  # the run's own error is the one to see
    Curves(None, [{"epoch": 1}], "auc", Path("x")).draw(final=True)  # other ranks draw nothing
