"""The one renderer of measurements: markdown tables and cells, and PNG plots.

- ``table``: a markdown table's lines from a header and rows (numbers right-aligned unless told otherwise);
- ``spread_cell``: a measurement's cell, median [p10, p90] (``timing.quantiles``), scaled and formatted;
- ``save_plot``: panels of series with p10-p90 error bars where a series has them, one legend outside the data
  (to the right of the panels, each label once), log axes on request. matplotlib is optional (the ``plot`` extra):
  without it ``save_plot`` raises ``MissingDependency``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InvalidInput, MissingDependency


def spread_cell(q: dict, scale: float = 1.0, spec: str = ".1f") -> str:
    """``median [p10, p90]`` of a measurement's quantiles, each times ``scale``, formatted with ``spec``."""
    return f"{q['median'] * scale:{spec}} [{q['p10'] * scale:{spec}}, {q['p90'] * scale:{spec}}]"


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> list[str]:
    """The lines of a markdown table. ``align``: one letter per column, ``l`` or ``r`` (default: ``l`` for the first
    column, ``r`` for the rest). A cell is written as ``str(cell)`` on one line, its ``|`` escaped; None is an
    empty cell."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise InvalidInput(f"align {align!r} must give l or r for each of {len(header)} columns")
    if any(len(r) != len(header) for r in rows):
        raise InvalidInput(f"every row needs {len(header)} cells")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _cell(value: object) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class Series:
    """One line: ``y`` against ``x``; ``low`` and ``high`` (the p10 and p90 of each point) draw error bars;
    ``style``: matplotlib's keyword arguments (color, marker, linestyle, alpha...)."""

    label: str | None
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    style: dict = field(default_factory=dict)


@dataclass
class Panel:
    title: str
    xlabel: str
    series: list[Series]
    ylabel: str = ""
    xlog: float | None = None  # the log base of the x axis (None: linear)
    ylog: bool = False
    xticks: Sequence[float] | None = None  # ticks labelled with their values


def _draw(ax, panel: Panel) -> None:
    for s in panel.series:
        style = {"marker": "o", "markersize": 4, **s.style}
        y = [math.nan if v is None else v for v in s.y]
        if s.low is not None and s.high is not None:
            err = [[max(0.0, m - lo) for m, lo in zip(y, s.low)], [max(0.0, hi - m) for m, hi in zip(y, s.high)]]
            ax.errorbar(s.x, y, yerr=err, capsize=3, label=s.label, **style)
        else:
            ax.plot(s.x, y, label=s.label, **style)
    if panel.xlog:
        ax.set_xscale("log", base=panel.xlog)
    if panel.ylog:
        ax.set_yscale("log")
    if panel.xticks is not None:
        ax.set_xticks(list(panel.xticks), [f"{t:g}" for t in panel.xticks])
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3, which="both")


def save_plot(path: str | Path, panels: Sequence[Panel], columns: int | None = None,
              panel_size: tuple[float, float] = (5.5, 4.0)) -> None:
    """Draw ``panels`` in a grid of ``columns`` (default: all in one row, at most 3) and save a PNG at ``path``,
    with one legend right of the grid holding every label once."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependency("plots need matplotlib: pip install 'tapdiff[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    legend_width = 2.6
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(panel_size[0] * columns + legend_width, panel_size[1] * rows))
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles: dict = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    share = legend_width / fig.get_figwidth()
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1 - share, 0.5),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - share, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
