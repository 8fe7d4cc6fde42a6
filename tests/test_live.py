"""The live view: rendering from a run's data, polling, and cancelling an in-kernel run while the
kernel keeps running cells."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import ftmagic
from fixtures_ui import TestingShell, fast_fields, ipshell, ui_env
from ftmagic.errors import RunError
from ftmagic.ui import html as render
from ftmagic.ui.live import LiveView, status_name
from ftmagic.ui.plot import curves_png
from polling import wait_until

__all__ = ["ipshell", "ui_env"]

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Event:
    type: str
    time: float
    message: str
    step: int | None = None


@dataclass
class RecordedRun:
    """Run data as a polling view sees it, for the pure rendering tests (no MLflow needed)."""

    run_id: str = "abc123"
    name: str = "tiny-chat-ner"
    status: str = "RUNNING"
    status_reason: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    checkpoints: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    refreshes: int = 0

    def refresh(self) -> None:
        self.refreshes += 1

    def metrics(self, names: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
        return {k: list(v) for k, v in self.series.items() if names is None or k in names}

    def generations(self) -> list[dict[str, Any]]:
        return list(self.rows)


def test_update_renders_progress_plot_events_and_generations() -> None:
    run = RecordedRun(
        progress={"step": 3, "total_steps": 10, "tokens": 12288, "elapsed_s": 12, "eta_s": 28},
        series={"train/loss": [(1, 3.2), (2, 2.9), (3, 2.5)], "train/lr": [(1, 1e-3)]},
        events=[Event("started", 0.0, "training 10 steps"), Event("checkpoint", 1.0, "saved", 2)],
        checkpoints=["step-2"],
        rows=[{"step": 2, "prompt": "Aspirin <b>", "response": "[]"}],
    )
    view = LiveView(run, start=False, interactive=False)
    assert view.update() is False
    assert (view.progress_bar.value, view.progress_bar.max) == (3, 10)
    text = view.progress_text.value
    assert "step 3 of 10" in text and "12,288 tokens" in text
    assert "elapsed 0:12" in text and "ETA 0:28" in text and "RUNNING" in text
    assert bytes(view.plot.value).startswith(PNG)
    assert "(step 2): saved" in view.events_html.value
    assert "Aspirin &lt;b&gt;" in view.generations_html.value
    assert not view.cancel_button.disabled


def test_plot_is_redrawn_only_when_metrics_change() -> None:
    run = RecordedRun(series={"train/loss": [(1, 3.0)]})
    view = LiveView(run, start=False, interactive=False)
    view.update()
    view.plot.value = b"sentinel"
    view.update()
    assert bytes(view.plot.value) == b"sentinel"
    run.series["train/loss"].append((2, 2.0))
    view.update()
    assert bytes(view.plot.value).startswith(PNG)


def test_polling_stops_after_the_final_refresh() -> None:
    run = RecordedRun(status="COMPLETED", progress={"step": 4, "total_steps": 4})
    ended: list[Any] = []
    view = LiveView(run, refresh_interval=0.5)
    view.on_done(ended.append)
    view.join(timeout=10)
    assert ended == [run] and view.done and run.refreshes == 1
    assert view.cancel_button.disabled and view.progress_bar.bar_style == "success"


def test_polling_ends_with_a_message_when_the_run_is_deleted() -> None:
    class DeletedRun(RecordedRun):
        def refresh(self) -> None:
            raise RunError(f"run {self.run_id} no longer exists in sqlite:///x.db")

    view = LiveView(DeletedRun(), refresh_interval=0.5)
    view.join(timeout=10)
    assert not view.done
    assert "run abc123 no longer exists" in view.message.value


def test_html_helpers() -> None:
    assert (render.clock(75), render.clock(3725), render.clock(None)) == ("1:15", "1:02:05", "—")
    grid = render.generations_by_checkpoint_html(
        [
            {"step": 2, "prompt": "p1", "response": "a"},
            {"step": 4, "prompt": "p1", "response": "b"},
            {"step": 4, "prompt": "p2", "response": "c"},
        ]
    )
    assert grid.count(">step ") == 2 and grid.count("<tr>") == 3
    command = render.serve_command("models:/ner/1")
    assert command.startswith("mlflow models serve -m models:/ner/1 --host 127.0.0.1")
    assert status_name(type("S", (), {"value": "STOPPED"})()) == "STOPPED"
    png = curves_png({"train/loss": [(1, 2.0), (2, 1.0)], "eval/loss": [(2, 1.5)]})
    assert png.startswith(PNG) and len(png) > 2000


# --- against real runs ------------------------------------------------------------------------


def test_kernel_runs_cells_while_training_and_cancel_stops(
    ipshell: TestingShell, ui_env: dict[str, Any]
) -> None:
    run = ftmagic.create(
        fast_fields(ui_env, training_duration="400ba", checkpoint_interval="400ba")
    )
    view = LiveView(run, refresh_interval=0.5)
    wait_until(lambda: view.update() or view.progress_bar.value >= 1, 240, "a full bar")
    assert status_name(run.status) == "RUNNING", run.status_reason
    out = ipshell.run_cell("answer = sum(range(10))\nanswer")
    assert out.result == 45  # the kernel runs cells while the run trains in a thread
    view.cancel_button.click()
    assert view.cancel_button.disabled
    run.wait()
    view.join(timeout=60)
    assert status_name(run.status) == "STOPPED" and view.done
    assert "STOPPED" in view.progress_text.value
    assert 1 <= view.progress_bar.value < 400
    assert bytes(view.plot.value).startswith(PNG)


def test_final_outputs_are_a_summary_card_and_the_curves() -> None:
    @dataclass
    class Checkpoint:
        step: int

    run = RecordedRun(
        status="COMPLETED",
        progress={"step": 4, "total_steps": 4, "tokens": 4096, "elapsed_s": 65},
        series={
            "train/loss": [(1, 3.0), (4, 2.0)],
            "eval/loss": [(2, 2.6), (4, 2.7)],
            "train/tokens_per_s": [(1, 60.0), (4, 70.0)],
        },
        events=[Event("TIMING", 9.0, "estimated 50 s, took 61 s")],
        checkpoints=[Checkpoint(2), Checkpoint(4)],
    )
    run.registered_model = "models:/main.ner/3"  # type: ignore[attr-defined]
    run.tracking_uri = "sqlite:////tmp/x/mlflow.db"  # type: ignore[attr-defined]
    view = LiveView(run, start=False)
    assert view.update() is True
    assert view.cancel_button.disabled and view.cancel_button.layout.display == "none"
    card, curves = view.final_outputs()
    html_card, text = card["text/html"], card["text/plain"]
    assert ">COMPLETED<" in html_card and "Cancel" not in html_card
    assert "final eval loss</th>" in html_card and "2.7000" in html_card
    assert "best eval loss</th>" in html_card and "2.6000" in html_card
    assert "4 of 4" in html_card and "4,096" in html_card and ">65<" in html_card
    assert "1:05 (estimated 50 s, took 61 s)" in html_card
    assert "2 (steps 2, 4)" in html_card and "models:/main.ner/3" in html_card
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db" in html_card
    assert "mlflow models serve -m models:/main.ner/3 --host 127.0.0.1" in html_card
    assert text.startswith("run tiny-chat-ner: COMPLETED") and "best eval loss   2.6000" in text
    assert base64.b64decode(curves["image/png"]).startswith(PNG)


def test_setup_stages_show_before_the_first_step_and_one_point_is_drawn() -> None:
    run = RecordedRun(progress={"step": 0}, events=[Event("RUNNING", 0.0, "run is running")])
    view = LiveView(run, start=False, interactive=False)
    view.update()
    assert "validating the data…" in view.progress_text.value
    assert "step 0" not in view.progress_text.value
    run.events.append(Event("DATA_VALIDATED", 1.0, "ok"))
    view.update()
    assert "loading the model…" in view.progress_text.value
    run.progress, run.series = {"step": 1, "total_steps": 8}, {"train/loss": [(1, 7.6)]}
    view.update()
    assert "step 1 of 8" in view.progress_text.value and "…" not in view.progress_text.value
    one_point = bytes(view.plot.value)
    run.series = {}
    view.update()
    assert len(one_point) > len(bytes(view.plot.value)) + 100  # the point is drawn


def test_y_limits_keep_a_tiny_change_flat() -> None:
    from ftmagic.ui.plot import y_limits

    low, high = y_limits([7.643, 7.639])  # type: ignore[misc]
    assert high - low >= 0.02 * 7.643 and low < 7.639 and high > 7.643
    assert y_limits([1.0, 3.0]) == (0.9, 3.1)
    assert y_limits([float("nan")]) is None
