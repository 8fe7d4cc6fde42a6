"""Loss and learning-rate curves drawn with matplotlib's Agg canvas into PNG bytes.

The live view puts the bytes into an ``ipywidgets.Image``, so the plot updates in place without
``clear_output`` flicker. ``matplotlib.figure.Figure`` is used directly (no pyplot): it keeps no
global figure registry and is safe to draw from the polling thread.
"""

from __future__ import annotations

import io
import math

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
    limits = y_limits([v for name in ("train/loss", "eval/loss") for _, v in metrics.get(name, [])])
    if limits is not None:
        loss_axes.set_ylim(*limits)
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


MIN_SPAN = 0.02  # the y range covers at least 2% of the values' size


def _line(axes: object, series: Series, label: str, *, marker: str) -> None:
    if not series:
        return
    steps = [step for step, _ in series]
    values = [value for _, value in series]
    marker = marker or ("o" if len(series) < 3 else "")  # one point is a dot, not nothing
    axes.plot(steps, values, label=label, marker=marker, linewidth=1.5)  # type: ignore[attr-defined]


def y_limits(values: list[float]) -> tuple[float, float] | None:
    """Limits that do not blow a tiny change up to the full height (7.643 -> 7.639 is flat),
    ignoring non-finite values; None when there is nothing finite to show.

    >>> y_limits([7.643, 7.639])
    (7.5569, 7.7251)
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    floor = MIN_SPAN * max(abs(low), abs(high), 1e-12)
    span = max(high - low, floor)
    middle = (low + high) / 2
    return (round(middle - span * 0.55, 4), round(middle + span * 0.55, 4))


def compare_png(
    runs: dict[str, dict[str, Series]], *, width: float = 8.0, height: float = 3.6
) -> bytes:
    """A PNG overlaying the train (lines) and eval (dots) loss of several runs, one colour per run,
    the run names in the legend; ``runs`` maps a run name to its metrics."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, (name, metrics) in enumerate(runs.items()):
        color = f"C{index % 10}"
        for metric, style in (("train/loss", "-"), ("eval/loss", "o:")):
            series = metrics.get(metric, [])
            if series:
                label = f"{name} {metric.split('/')[0]}"
                axes.plot(*zip(*series, strict=True), style, color=color, label=label)
    limits = y_limits(
        [v for m in runs.values() for n in ("train/loss", "eval/loss") for _, v in m.get(n, [])]
    )
    if limits is not None:
        axes.set_ylim(*limits)
    axes.set_title("loss", fontsize=10)
    axes.set_xlabel("step", fontsize=9)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
