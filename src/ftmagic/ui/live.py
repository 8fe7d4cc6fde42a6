"""The live view of a run: progress, loss and learning-rate curves, events, generations, Cancel.

A background thread polls the run (``run.refresh()`` reads it from MLflow, so every backend gets the
same view) and only sets widget traits; it never writes through ``with output:``, which is unsafe
from a thread. The plot is redrawn only when the metrics changed, at most every
``MIN_INTERVAL_S`` seconds. ``update()`` performs one poll synchronously.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ftmagic.errors import RunError
from ftmagic.ui import html as render
from ftmagic.ui.errors import message_html
from ftmagic.ui.plot import curves_png

log = logging.getLogger(__name__)

PLOT_METRICS = ("train/loss", "eval/loss", "train/lr")
MIN_INTERVAL_S = 0.5
DONE_STATUSES = ("COMPLETED", "FAILED", "STOPPED")


def status_name(status: Any) -> str:
    """``RunStatus.RUNNING`` or ``"RUNNING"`` -> ``"RUNNING"``."""
    return str(getattr(status, "value", status))


class LiveView(widgets.VBox):
    """Watch ``run`` until it ends. ``cancel_button.click()`` asks it to stop."""

    def __init__(self, run: Any, *, refresh_interval: float = 1.0, start: bool = True) -> None:
        self.run = run
        self.refresh_interval = max(MIN_INTERVAL_S, refresh_interval)
        self.title = widgets.HTML(self._title_html())
        self.progress_bar = widgets.IntProgress(min=0, max=1, value=0, description="progress")
        self.progress_text = widgets.HTML()
        self.plot = widgets.Image(format="png", layout=widgets.Layout(max_width="640px"))
        self.events_html = widgets.HTML()
        self.generations_html = widgets.HTML()
        self.cancel_button = widgets.Button(
            description="Cancel", button_style="danger", icon="stop"
        )
        self.cancel_button.on_click(lambda _button: self.cancel())
        self.message = widgets.HTML()
        events = widgets.Accordion([self.events_html], titles=("events",), selected_index=0)
        super().__init__(
            [
                self.title,
                widgets.HBox([self.progress_bar, self.cancel_button]),
                self.progress_text,
                self.plot,
                self.generations_html,
                events,
                self.message,
            ]
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._plot_key: object = None
        self._checkpoint_count = -1
        self._done_callbacks: list[Callable[[Any], None]] = []
        self.done = False
        if start:
            self.start()

    # --- polling ----------------------------------------------------------------------------
    def update(self) -> bool:
        """Read the run once and refresh every widget; returns whether the run has ended."""
        with self._lock:
            self.run.refresh()
            status = status_name(self.run.status)
            self._show_progress(status)
            self._show_plot()
            self.events_html.value = render.events_html(self.run.events)
            self._show_generations()
            self.done = status in DONE_STATUSES
            if self.done:
                self.cancel_button.disabled = True
            return self.done

    def start(self) -> None:
        """Poll in a daemon thread until the run ends or ``stop()`` is called."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="ftmagic-live-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the polling thread (it ends after the run's final refresh)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def on_done(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(run)`` from the polling thread once the run has ended."""
        self._done_callbacks.append(callback)

    def cancel(self) -> None:
        """Ask the run to stop (it checkpoints and ends as STOPPED)."""
        import ftmagic

        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        ftmagic.cancel(self.run)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                if self.update():
                    self._finish()
                    return
            except RunError as err:  # the run was deleted: nothing more to watch
                self.message.value = message_html(str(err))
                return
            except Exception as err:  # a transient store error must not kill the view
                log.warning("live view: reading run %s failed: %s", self.run.run_id, err)
                self.message.value = message_html(f"cannot read the run (will retry): {err}")
            self._stop.wait(self.refresh_interval)

    def _finish(self) -> None:
        self.cancel_button.description = "Cancel"
        for callback in self._done_callbacks:
            callback(self.run)

    # --- rendering --------------------------------------------------------------------------
    def _title_html(self) -> str:
        name = html.escape(str(getattr(self.run, "name", "") or ""))
        return f"<b>{name}</b> <code style='color:#777'>{html.escape(str(self.run.run_id))}</code>"

    def _show_progress(self, status: str) -> None:
        progress = dict(self.run.progress or {})
        total = int(progress.get("total_steps") or 0)
        step = int(progress.get("step") or 0)
        self.progress_bar.max = max(total, step, 1)
        self.progress_bar.value = step
        if status == "COMPLETED":
            self.progress_bar.value = self.progress_bar.max
        self.progress_bar.bar_style = {"COMPLETED": "success", "FAILED": "danger"}.get(status, "")
        reason = getattr(self.run, "status_reason", None)
        self.progress_text.value = render.progress_html(progress, status, reason)

    def _show_plot(self) -> None:
        metrics = self.run.metrics(list(PLOT_METRICS))
        key = tuple((name, len(v), v[-1] if v else None) for name, v in sorted(metrics.items()))
        if key != self._plot_key:
            self.plot.value = curves_png(metrics)
            self._plot_key = key

    def _show_generations(self) -> None:
        count = len(self.run.checkpoints)
        if count != self._checkpoint_count:
            self.generations_html.value = render.generations_html(self.run.generations())
            self._checkpoint_count = count
