"""The one renderer (engine.evaluation.render): markdown tables and cells, and plots whose legend sits outside
the data and whose points carry their p10-p90 bars."""
import pytest

from engine.evaluation.render import Panel, Series, save_plot, spread_cell, table


def test_tables_align_numbers_right_and_refuse_ragged_rows():
    assert table(["system", "ms"], [["a", 1.5], ["b", None]]) == [
        "| system | ms |", "|---|---:|", "| a | 1.5 |", "| b |  |"]
    assert table(["x", "y"], [["1", "2"]], align="ll")[1] == "|---|---|"
    with pytest.raises(ValueError, match="every row"):
        table(["x", "y"], [["1"]])
    with pytest.raises(ValueError, match="align"):
        table(["x", "y"], [], align="lc")


def test_a_spread_cell_is_the_median_and_its_p10_p90():
    assert spread_cell({"median": 0.0123, "p10": 0.0110, "p90": 0.0150}, 1e3) == "12.3 [11.0, 15.0]"


def test_a_plot_keeps_its_legend_outside_every_panel_and_draws_the_bars(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))  # look at the figure once saved
    series = [Series(f"system {i}", [1, 4, 16], [1.0 + i, 2.0 + i, 3.0 + i], [0.9 + i, 1.8 + i, 2.5 + i],
                     [1.2 + i, 2.5 + i, 3.9 + i]) for i in range(8)]
    save_plot(tmp_path / "p.png", [Panel("seconds", "batch", series, xlog=2, ylog=True),
                                   Panel("memory", "batch", [Series(None, [1, 4], [2.0, 3.0])])])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    fig = kept["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"system {i}" for i in range(8)]  # each label once
    left_of_legend = legend.get_window_extent(renderer).x0
    assert all(ax.get_window_extent(renderer).x1 <= left_of_legend for ax in fig.axes)
    bars = [c for c in fig.axes[0].containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(bars) == 8 and fig.axes[0].get_xscale() == "log"
