"""Loss and learning-rate curves drawn with matplotlib's Agg canvas into PNG bytes.

The live view puts the bytes into an ``ipywidgets.Image``, so the plot updates in place without
``clear_output`` flicker. ``matplotlib.figure.Figure`` is used directly (no pyplot): it keeps no
global figure registry and is safe to draw from the polling thread.
"""

from __future__ import annotations

import io

Series = list[tuple[int, float]]


def curves_png(metrics: dict[str, Series], *, width: float = 8.0, height: float = 2.8) -> bytes:
    """A PNG of train/eval loss (left) and the learning rate (right) against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(figure)
    loss_axes, lr_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    _line(loss_axes, metrics.get("train/loss", []), "train loss", marker="")
    _line(loss_axes, metrics.get("eval/loss", []), "eval loss", marker="o")
    loss_axes.set_title("loss", fontsize=10)
    loss_axes.set_xlabel("step", fontsize=9)
    if loss_axes.lines:
        loss_axes.legend(fontsize=8)
    _line(lr_axes, metrics.get("train/lr", []), "learning rate", marker="")
    lr_axes.set_title("learning rate", fontsize=10)
    lr_axes.set_xlabel("step", fontsize=9)
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for axes in (loss_axes, lr_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _line(axes: object, series: Series, label: str, *, marker: str) -> None:
    if not series:
        return
    steps = [step for step, _ in series]
    values = [value for _, value in series]
    axes.plot(steps, values, label=label, marker=marker, linewidth=1.5)  # type: ignore[attr-defined]
