"""One self-contained HTML page: sections of text, tables and figures, every PNG embedded as a data: URI.

Nothing is linked (no script, stylesheet or image outside the file), so the page opens from disk or a mail
attachment with no server.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from strokekit.atomic import write_text_atomic
from strokekit.report.figures import png_bytes

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555;margin-top:.3em}img{max-width:100%;height:auto}
caption{caption-side:bottom;font-size:.85em;color:#555;text-align:left;padding-top:.3em}
.note{color:#555;font-size:.9em}nav a{margin-right:1em}
"""


COUNT_WORDS = ("n", "positives", "tp", "fp", "fn", "tn", "images", "slices", "pixels", "anyway", "folds", "fold")


def is_count(column) -> bool:
    """A column of counts (n, positives, tp / fp / fn / tn, '... slices', 'images ...'): shown as integers."""
    words = str(column).lower().replace("_", " ").replace("-", " ").split()
    return bool(words) and (words[0] in COUNT_WORDS or words[-1] in COUNT_WORDS)


def fmt(value, digits: int = 4, count: bool = False) -> str:
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        if count and float(value).is_integer():
            return str(int(value))
        return f"{value:.{digits}f}"
    return str(value)


def interval_text(value: dict, digits: int = 4) -> str:
    """'0.8123 [0.7710, 0.8490]' from a bootstrap result (evaluation/bootstrap.py); the estimate alone
    without low / high."""
    if "low" not in value:
        return fmt(float(value["estimate"]), digits)
    return f"{value['estimate']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def intervals_frame(intervals: dict[str, dict]) -> pd.DataFrame:
    """One row per figure: estimate [95 % interval], the images resampled and the resamples drawn."""
    return pd.DataFrame([{"figure": name, "estimate [95 % interval]": interval_text(value),
                          "resample size": int(value.get("size", value.get("n", 0)) or 0),
                          "images": int(value.get("n", 0) or 0), "resamples": int(value.get("n_boot", 0) or 0)}
                         for name, value in intervals.items()])


class HtmlReport:
    """Collects blocks in order; `write(path)` renders the page with a table of contents."""

    def __init__(self, title: str):
        self.title, self.blocks, self.toc = title, [], []

    def section(self, title: str, level: int = 2) -> "HtmlReport":
        anchor = f"s{sum(b.startswith('<h') for b in self.blocks)}"
        if level == 2:
            self.toc.append((anchor, title))
        self.blocks.append(f'<h{level} id="{anchor}">{html.escape(title)}</h{level}>')
        return self

    def text(self, text: str, note: bool = False) -> "HtmlReport":
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def figure(self, fig_or_png, caption: str = "", alt: str = "") -> "HtmlReport":
        """A matplotlib figure (or PNG bytes) embedded as base64."""
        data = fig_or_png if isinstance(fig_or_png, bytes) else png_bytes(fig_or_png)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        label = html.escape(alt or caption or "figure", quote=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img src="{uri}" alt="{label}">{cap}</figure>')
        return self

    def table(self, frame: pd.DataFrame, digits: int = 4, caption: str = "") -> "HtmlReport":
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        counts = [is_count(c) for c in frame.columns]
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v, digits, k))}</td>" for v, k in zip(row, counts))
                       + "</tr>" for row in frame.itertuples(index=False))
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        return self

    def render(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.toc)
        stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1><p class=\"note\">written by strokekit {stamp}</p>"
                f"<nav>{nav}</nav>\n" + "\n".join(self.blocks) + "\n</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.render())
        return path
