"""The loss curve as a PNG, drawn with matplotlib's Agg backend (no display, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Point = tuple[float, float]


def save_loss_curve(path: str, train: Sequence[Point], evals: Sequence[Point]) -> None:
    """Write a PNG of the training loss and the held-out losses to ``path``.

    Args:
        path: the PNG file to write (overwritten).
        train: ``(step, loss)`` points of the training loss, drawn as a blue line.
        evals: ``(step, loss)`` points of the held-out loss (e.g. before and after training), red dots.
    """
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train), color="tab:blue", label="train loss")
    if evals:
        axes.plot(*zip(*evals), "o", color="tab:red", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if train or evals:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
