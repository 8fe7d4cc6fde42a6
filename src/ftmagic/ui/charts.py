"""Interactive training curves with plotly: hover and zoom, a log-scale toggle, EMA smoothing.

``CurvesView`` holds a ``plotly.graph_objects.FigureWidget`` (an anywidget) with four panels: loss
(train and eval), learning rate, grad norm and tokens/s. ``update(metrics)`` is called from the
live view's one polling thread; it redraws at most every ``MIN_INTERVAL_S`` seconds inside one
``fig.batch_update()``, so the browser gets one message per redraw. plotly is imported only when a
view is built; ``interactive_available()`` says whether it can be (the live view falls back to the
PNG curves otherwise).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ftmagic.ui.plot import Series, y_limits

MIN_INTERVAL_S = 0.5
PANELS = (
    ("loss", ("train/loss", "eval/loss")),
    ("learning rate", ("train/lr",)),
    ("grad norm", ("train/grad_norm",)),
    ("tokens/s", ("train/tokens_per_s",)),
)
METRICS = tuple(name for _, names in PANELS for name in names)
LABELS = {"train/loss": "train loss", "eval/loss": "eval loss"}
SKIP_FRACTION = 0.1  # the first steps' spike is left out of the loss panel's y range


def interactive_available() -> bool:
    """Whether plotly's FigureWidget (which needs anywidget) can be built here."""
    try:
        import anywidget  # noqa: F401
        import plotly.graph_objects  # noqa: F401
    except ImportError:
        return False
    return True


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths); ``weight`` 0
    keeps the values, non-finite values pass through without poisoning the average.

    >>> ema([1.0, 3.0], 0.5)
    [1.0, 2.333333333333333]
    """
    if weight <= 0:
        return list(values)
    smoothed, last, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        count += 1
        last = last * weight + (1 - weight) * value
        smoothed.append(last / (1 - weight**count))
    return smoothed


def robust_limits(values: list[float]) -> tuple[float, float] | None:
    """y limits of a curve that leave out the first steps' spike (the first ``SKIP_FRACTION`` of
    points once there are 10 or more) and keep ``y_limits``'s rule that a tiny change stays
    flat."""
    skip = int(len(values) * SKIP_FRACTION) if len(values) >= 10 else 0
    return y_limits(values[skip:])


def build_figure(title: str = "") -> Any:
    """The four-panel FigureWidget with one (empty) trace per metric, in ``METRICS`` order."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = go.FigureWidget(
        make_subplots(rows=1, cols=4, subplot_titles=[name for name, _ in PANELS])
    )
    for col, (_, names) in enumerate(PANELS, start=1):
        for name in names:
            mode = "lines+markers" if name == "eval/loss" else "lines"
            trace = go.Scatter(x=[], y=[], mode=mode, name=LABELS.get(name, name))
            figure.add_trace(trace, row=1, col=col)
    figure.update_layout(
        height=280, margin={"l": 40, "r": 10, "t": 40, "b": 30}, title=title or None,
        legend={"orientation": "h", "y": -0.15}, hovermode="x unified",
    )  # fmt: skip
    figure.update_xaxes(title_text="step")
    return figure


class CurvesView(widgets.VBox):
    """The interactive curves and their controls; ``update(metrics)`` from one thread only."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.figure = build_figure()
        self.log_scale = widgets.Checkbox(value=False, description="log loss", indent=False)
        self.smoothing = widgets.FloatSlider(
            value=0.0, min=0.0, max=0.99, step=0.01, description="smoothing",
            continuous_update=False,
        )  # fmt: skip
        self.log_scale.observe(lambda _change: self.redraw(), names="value")
        self.smoothing.observe(lambda _change: self.redraw(), names="value")
        super().__init__([widgets.HBox([self.log_scale, self.smoothing]), self.figure])
        self._clock = clock
        self._lock = threading.Lock()
        self._metrics: dict[str, Series] = {}
        self._last_draw = -math.inf
        self._pending = False
        self.redraws = 0

    def update(self, metrics: dict[str, Series], *, force: bool = False) -> bool:
        """Take the run's latest metrics; redraw when they changed and the last redraw is at
        least ``MIN_INTERVAL_S`` old (or ``force``). Returns whether it redrew; skipped changes
        are drawn by a later call."""
        with self._lock:
            if metrics != self._metrics:
                self._metrics = {k: list(v) for k, v in metrics.items()}
                self._pending = True
            due = self._clock() - self._last_draw >= MIN_INTERVAL_S
            if not self._pending or not (due or force):
                return False
            self._draw()
            return True

    def redraw(self) -> None:
        """Draw now (a control changed)."""
        with self._lock:
            self._draw()

    def _draw(self) -> None:
        weight = float(self.smoothing.value)
        log = bool(self.log_scale.value)
        loss_values: list[float] = []
        with self.figure.batch_update():
            for trace, name in zip(self.figure.data, METRICS, strict=True):
                series = self._metrics.get(name, [])
                values = [v for _, v in series]
                if name in ("train/loss", "eval/loss"):
                    values = ema(values, weight) if name == "train/loss" else values
                    loss_values.extend(values)
                trace.x = [step for step, _ in series]
                trace.y = values
            self._set_loss_axis(loss_values, log)
        self._last_draw = self._clock()
        self._pending = False
        self.redraws += 1

    def _set_loss_axis(self, values: list[float], log: bool) -> None:
        axis = self.figure.layout.yaxis
        if log:
            axis.type, axis.range = "log", None
            axis.autorange = True
            return
        axis.type = "linear"
        limits = robust_limits(values)
        if limits is None:
            axis.autorange = True
        else:
            axis.range = list(limits)


def compare_figure(runs: dict[str, dict[str, Series]]) -> Any:
    """One plotly figure overlaying the train (lines) and eval (markers) loss of each run, the
    run's name in the legend; ``runs`` maps a run name to its metrics."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for index, (name, metrics) in enumerate(runs.items()):
        color = COLORS[index % len(COLORS)]
        for metric, mode, dash in (
            ("train/loss", "lines", None),
            ("eval/loss", "lines+markers", "dot"),
        ):
            series = metrics.get(metric, [])
            figure.add_trace(
                go.Scatter(
                    x=[s for s, _ in series], y=[v for _, v in series], mode=mode,
                    name=f"{name} {LABELS[metric]}", legendgroup=name,
                    line={"color": color, "dash": dash},
                )
            )  # fmt: skip
    values = [
        v for m in runs.values() for n in ("train/loss", "eval/loss") for _, v in m.get(n, [])
    ]
    limits = y_limits(values)
    figure.update_layout(
        title="loss", xaxis_title="step", yaxis_title="loss", height=360,
        yaxis_range=list(limits) if limits else None, hovermode="x unified",
    )  # fmt: skip
    return figure


COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
