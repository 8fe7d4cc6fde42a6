"""Interactive curves (plotly): points from a run's metrics, at most ~2 redraws a second, the
smoothing and log-scale controls, the PNG fallback without plotly, and ``%ft compare``."""

from __future__ import annotations

import base64
import sys
from typing import Any

import pytest
from IPython.core.error import UsageError

import ftmagic
from fixtures_ui import TestingShell, fast_fields, ipshell, ui_env
from ftmagic.ui import charts
from ftmagic.ui.ft_commands import LossComparison, compare
from ftmagic.ui.live import LiveView
from test_live import PNG, RecordedRun

__all__ = ["ipshell", "ui_env"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(start: int, count: int) -> list[tuple[int, float]]:
    return [(step, 8.0 / step) for step in range(start, start + count)]


def test_curves_take_points_from_metrics_and_redraw_at_most_twice_a_second() -> None:
    clock = FakeClock()
    view = charts.CurvesView(clock=clock)
    loss: list[tuple[int, float]] = []
    drawn = []
    for _tick in range(16):  # 16 metric batches over 2 s of the clock, every 1/8 s
        loss = loss + batch(len(loss) + 1, 3)
        metrics = {"train/loss": loss, "train/lr": [(1, 1e-3), (2, 5e-4)]}
        metrics["train/grad_norm"] = [(1, 2.5)]
        metrics["train/tokens_per_s"] = [(1, 900.0)]
        drawn.append(view.update(metrics))
        clock.now += 0.125
    assert sum(drawn) == 4 and drawn[:5] == [True, False, False, False, True]
    clock.now += 1
    assert view.update(metrics) is True  # the last batch is drawn once due
    assert view.update(metrics) is False  # nothing new
    train, evals, lr, grad, speed = view.figure.data
    assert list(train.x) == list(range(1, 49)) and train.y[-1] == pytest.approx(8.0 / 48)
    assert list(lr.y) == [1e-3, 5e-4] and list(grad.y) == [2.5] and list(speed.y) == [900.0]
    assert list(evals.x) == [] and view.redraws == 5
    _low, high = view.figure.layout.yaxis.range
    assert high < 2.0  # the first steps' spike (8, 4, ...) is left out of the loss range


def test_smoothing_and_log_scale_change_the_figure() -> None:
    view = charts.CurvesView()
    noisy = [(step, 2.0 + (0.5 if step % 2 else -0.5)) for step in range(1, 21)]
    view.update({"train/loss": noisy, "eval/loss": [(10, 2.1), (20, 2.0)]}, force=True)
    raw = list(view.figure.data[0].y)
    assert raw == [v for _, v in noisy] and list(view.figure.data[1].y) == [2.1, 2.0]
    view.smoothing.value = 0.9
    smooth = list(view.figure.data[0].y)
    assert max(smooth[5:]) - min(smooth[5:]) < 0.3 < max(raw) - min(raw)
    assert view.figure.layout.yaxis.type == "linear"
    view.log_scale.value = True
    assert view.figure.layout.yaxis.type == "log" and view.redraws == 3


def test_a_tiny_change_stays_flat_in_the_interactive_view() -> None:
    view = charts.CurvesView()
    view.update({"train/loss": [(1, 7.643), (2, 7.639)]}, force=True)
    low, high = view.figure.layout.yaxis.range
    assert high - low >= 0.02 * 7.643
    assert charts.ema([1.0, float("nan"), 3.0], 0.5)[2] == pytest.approx(7 / 3)


def test_live_view_is_interactive_and_ends_with_the_png() -> None:
    run = RecordedRun(series={"train/loss": batch(1, 4), "train/grad_norm": [(1, 3.0)]})
    view = LiveView(run, start=False)
    assert view.chart in view.children and view.plot.layout.display == "none"
    view.update()
    assert list(view.chart.figure.data[3].y) == [3.0] and not bytes(view.plot.value or b"")
    run.status = "COMPLETED"
    run.series["train/loss"].append((5, 1.0))
    view.update()  # the final poll draws at once, however recent the last redraw
    assert view.chart.figure.data[0].x[-1] == 5 and bytes(view.plot.value).startswith(PNG)
    _card, curves = view.final_outputs()
    assert base64.b64decode(curves["image/png"]).startswith(PNG)


def test_png_fallback_when_plotly_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    assert charts.interactive_available() is False
    run = RecordedRun(series={"train/loss": batch(1, 4)})
    view = LiveView(run, start=False)
    view.update()
    assert view.chart is None and bytes(view.plot.value).startswith(PNG)
    comparison = LossComparison([run, run])
    bundle = comparison._repr_mimebundle_()
    assert comparison.figure is None and "application/vnd.plotly.v1+json" not in bundle
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ft_compare_overlays_two_runs(ipshell: TestingShell, ui_env: dict[str, Any]) -> None:
    first = ftmagic.create(fast_fields(ui_env, training_duration="2ba", checkpoint_interval="2ba"))
    first.wait()
    second = ftmagic.create(
        fast_fields(
            ui_env, training_duration="2ba", checkpoint_interval="2ba", learning_rate=1e-3,
            eval_data_path=str(ui_env["eval"]),
        )
    )  # fmt: skip
    second.wait()
    ipshell.user_ns["second"] = second
    out = ipshell.run_cell(f"%ft compare {first.run_id} second")
    comparison = out.result
    figure = comparison.figure
    names = [trace.name for trace in figure.data]
    expected = [f"{run.name} {kind} loss" for run in (first, second) for kind in ("train", "eval")]
    if first.name == second.name:
        expected = [
            f"{run.name} ({run.run_id[:8]}) {kind} loss"
            for run in (first, second)
            for kind in ("train", "eval")
        ]
    assert names == expected
    train_first = first.metrics(["train/loss"])["train/loss"]
    assert list(figure.data[0].x) == [step for step, _ in train_first] == [1, 2]
    assert list(figure.data[0].y) == [value for _, value in train_first]
    assert len(figure.data[3].x) >= 1 and len(figure.data[1].x) == 0  # only the second has eval
    bundle = comparison._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(PNG)
    assert len(bundle["application/vnd.plotly.v1+json"]["data"]) == 4
    with pytest.raises(UsageError, match="required: runs"):
        compare(ipshell.magics, [])
