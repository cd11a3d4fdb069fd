"""The report's figures are readable: every loss on its own axis with labelled ticks, a finetuning
curve whose axis does not blow up a fraction of a percent, legends that cover no curve."""

from __future__ import annotations

import numpy as np
import pytest

from o2o.pipeline.stages.report import finetune_figure, training_figure


def labelled_yticks(ax) -> list[str]:
    """The y tick labels shown inside the axis's limits (major and minor), after drawing."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim())
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    return [
        t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi
    ]


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_every_loss_gets_its_own_readable_axis():
    steps = np.arange(50, 3001, 50)
    rows = [
        {
            "step": str(s),
            "train/critic_loss": str(300.0 * np.exp(-s / 200) + 0.2),  # falls 1000x: log axis
            "train/actor_loss": str(-5.0 - s / 200),
            "train/value_loss": str(0.01 + 0.002 * np.sin(s)),
            "epoch": "0",
        }
        for s in steps
    ]
    rows.append({"step": "3000", "eval/return_mean": "1.0"})  # an evaluation row carries no loss
    fig = training_figure(rows, [{"step": 1000, "return_mean": 1.0}, {"step": 2000, "return_mean": 2.0}])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"critic_loss (log axis)", "actor_loss", "value_loss", "periodic evaluation"}
    assert panels["critic_loss (log axis)"].get_yscale() == "log" and panels["actor_loss"].get_yscale() == "linear"
    for name in ("critic_loss (log axis)", "actor_loss", "value_loss"):
        labels = labelled_yticks(panels[name])
        assert len(set(labels)) >= 3, (name, labels)  # not just "0" and "10^0"
    assert "each on its own axis; log where a loss fell by more than 30x" in fig._suptitle.get_text()


def test_the_finetuning_axis_does_not_exaggerate_a_tiny_change_and_the_legend_covers_no_curve():
    curve = [
        {"step": s, "return_mean": v, "success_rate": 1.0}
        for s, v in [(0, 177.3), (1000, 177.9), (2000, 178.3), (3000, 177.8)]
    ]
    fig = finetune_figure({"curve": curve, "rollback": None})
    ax = next(a for a in fig.axes if a.get_ylabel() == "return_mean")
    lo, hi = ax.get_ylim()
    assert lo <= 177.3 * 0.9 and hi >= 177.3 * 1.1  # +-10% of the pre-finetune level at least
    assert "at least ±10% of the pre-finetune level" in ax.get_title()
    fig.canvas.draw()
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 1  # one legend for both axes, success rate included
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert "success rate (right axis)" in texts and "pre-finetune level" in texts
    box = legends[0].get_window_extent()
    assert not any(overlaps(box, a.get_window_extent()) for a in fig.axes)  # outside every plotting area


def test_a_rollback_keeps_its_threshold_and_marks_in_view():
    curve = [{"step": 0, "return_mean": 100.0}, {"step": 100, "return_mean": 60.0}, {"step": 200, "return_mean": 50.0}]
    rb = {
        "metric": "return_mean",
        "threshold": 90.0,
        "step": 200,
        "value": 50.0,
        "restored_step": 0,
        "restored_value": 100.0,
    }
    fig = finetune_figure({"curve": curve, "rollback": rb})
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 50.0 and hi > 110.0 and "ROLLED BACK" in ax.get_title()
