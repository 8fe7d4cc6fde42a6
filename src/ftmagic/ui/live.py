"""The live view of a run: progress, loss and learning-rate curves, events, generations, Cancel.

A background thread polls the run (``run.refresh()`` reads it from MLflow, so every backend gets the
same view) and only sets widget traits; it never writes through ``with output:``, which is unsafe
from a thread. The plot is redrawn only when the metrics changed, at most every
``MIN_INTERVAL_S`` seconds. ``update()`` performs one poll synchronously.

With plotly and anywidget installed the curves are interactive (``ui.charts.CurvesView``: hover,
zoom, log scale, smoothing); otherwise, or with ``interactive=False``, they are a PNG. Either way
the PNG is drawn once the run has ended, for the outputs that stay.
"""

from __future__ import annotations

import base64
import html
import logging
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ftmagic.errors import RunError
from ftmagic.tracking.state import TERMINAL, RunStatus
from ftmagic.ui import html as render
from ftmagic.ui.errors import message_html
from ftmagic.ui.plot import curves_png

log = logging.getLogger(__name__)

PLOT_METRICS = ("train/loss", "eval/loss", "train/lr")
CHART_METRICS = ("train/loss", "eval/loss", "train/lr", "train/grad_norm", "train/tokens_per_s")
MIN_INTERVAL_S = 0.5
BAR_STYLES: dict[str, str] = {RunStatus.COMPLETED: "success", RunStatus.FAILED: "danger"}


def curves_view(interactive: bool | None) -> Any:
    """The interactive curves, or ``None`` for the PNG: when ``interactive`` is False, or None
    and plotly/anywidget are missing (an explicit True then raises their ImportError)."""
    from ftmagic.ui import charts

    if interactive is False or (interactive is None and not charts.interactive_available()):
        return None
    return charts.CurvesView()


def status_name(status: Any) -> str:
    """``RunStatus.RUNNING`` or ``"RUNNING"`` -> ``"RUNNING"``."""
    return str(getattr(status, "value", status))


class LiveView(widgets.VBox):
    """Watch ``run`` until it ends. ``cancel_button.click()`` asks it to stop."""

    def __init__(
        self,
        run: Any,
        *,
        refresh_interval: float = 1.0,
        start: bool = True,
        interactive: bool | None = None,
    ) -> None:
        self.run = run
        self.refresh_interval = max(MIN_INTERVAL_S, refresh_interval)
        self.title = widgets.HTML(self._title_html())
        self.progress_bar = widgets.IntProgress(min=0, max=1, value=0, description="progress")
        self.progress_text = widgets.HTML()
        self.plot = widgets.Image(format="png", layout=widgets.Layout(max_width="640px"))
        self.chart = curves_view(interactive)
        if self.chart is not None:
            self.plot.layout.display = "none"
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
                *([self.chart] if self.chart is not None else []),
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
            self.done = status in TERMINAL
            self._show_plot()
            self.events_html.value = render.events_html(self.run.events)
            self._show_generations()
            if self.done:  # nothing left to cancel
                self.cancel_button.disabled = True
                self.cancel_button.layout.display = "none"
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
        if status == RunStatus.COMPLETED:
            self.progress_bar.value = self.progress_bar.max
        self.progress_bar.bar_style = BAR_STYLES.get(status, "")
        reason = getattr(self.run, "status_reason", None)
        stage = render.setup_stage(self.run.events)
        self.progress_text.value = render.progress_html(progress, status, reason, stage)

    def _show_plot(self) -> None:
        if self.chart is not None:
            self.chart.update(self.run.metrics(list(CHART_METRICS)), force=self.done)
            if not self.done:  # the PNG is only drawn for the outputs that stay
                return
        metrics = self.run.metrics(list(PLOT_METRICS))
        key = tuple((name, len(v), v[-1] if v else None) for name, v in sorted(metrics.items()))
        if key != self._plot_key:
            self.plot.value = curves_png(metrics)
            self._plot_key = key

    # --- the outputs that stay ------------------------------------------------------------
    def final_outputs(self) -> list[dict[str, Any]]:
        """Mimebundles that replace the view once the run has ended: an HTML summary card and a
        PNG of the curves. Plain data, so they survive saving, a missing kernel and nbconvert."""
        summary = run_summary(self.run)
        outputs = [
            {
                "text/html": render.summary_card_html(summary),
                "text/plain": render.summary_text(summary),
            }
        ]
        png = bytes(self.plot.value or b"") or curves_png(self.run.metrics(list(PLOT_METRICS)))
        outputs.append(
            {
                "image/png": base64.b64encode(png).decode("ascii"),
                "text/plain": f"<loss and learning-rate curves of run {summary['name']}>",
            }
        )
        return outputs

    def close_all(self) -> None:
        """Close the view and every widget in it (their comms too)."""
        stack: list[widgets.Widget] = [self]
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            widget.close()

    def _show_generations(self) -> None:
        count = len(self.run.checkpoints)
        if count != self._checkpoint_count:
            self.generations_html.value = render.generations_html(self.run.generations())
            self._checkpoint_count = count


def run_summary(run: Any) -> dict[str, Any]:
    """What the summary card shows, read from the run as plain values."""
    progress = dict(run.progress or {})
    metrics = run.metrics(["eval/loss", "train/loss", "train/tokens_per_s"])
    evals = [value for _, value in metrics.get("eval/loss", [])]
    speeds = [value for _, value in metrics.get("train/tokens_per_s", [])]
    trains = metrics.get("train/loss", [])
    elapsed, tokens = progress.get("elapsed_s"), progress.get("tokens")
    if not speeds and elapsed and tokens:
        speeds = [tokens / elapsed]
    return {
        "name": str(getattr(run, "name", "") or ""),
        "run_id": str(run.run_id),
        "status": status_name(run.status),
        "status_reason": getattr(run, "status_reason", None),
        "step": progress.get("step"),
        "total_steps": progress.get("total_steps"),
        "tokens": tokens,
        "elapsed_s": elapsed,
        "estimated_s": estimated_seconds(run),
        "timing": timing_message(run),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "final_train_loss": trains[-1][1] if trains else None,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "checkpoints": [int(getattr(c, "step", 0)) for c in run.checkpoints],
        "registered_model": getattr(run, "registered_model", None),
        "tracking_uri": getattr(run, "tracking_uri", None),
        "gallery": summary_gallery(run),
    }


def summary_gallery(run: Any) -> dict[str, Any] | None:
    """The checkpoint gallery as plain values, when the run has an ``eval_metric`` or more than
    one checkpoint to compare; ``None`` otherwise or when it cannot be read (the card still
    shows)."""
    from ftmagic.checkpoint_gallery import gallery

    config = getattr(run, "config", None)
    if config is None or not (config.eval_metric or len(run.checkpoints) > 1):
        return None
    try:
        return render.gallery_plain(gallery(run))
    except Exception as err:  # the card matters more than its gallery
        log.warning("summary card: cannot read the gallery of run %s: %s", run.run_id, err)
        return None


ESTIMATED_TAG = "ftmagic.estimated_seconds"  # written by the trainer when the run was sized


def estimated_seconds(run: Any) -> float | None:
    """The run's up-front time estimate, when it recorded one (older runs did not)."""
    tags = getattr(run, "_tags", None)
    value = tags.get(ESTIMATED_TAG) if isinstance(tags, dict) else None
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def timing_message(run: Any) -> str | None:
    """The run's closing ``TIMING`` event ("estimated 40 s, took 52 s"), when it has one."""
    events = getattr(run, "events", None) or []
    return next((str(e.message) for e in reversed(events) if e.type == "TIMING"), None)


def display_live(view: LiveView) -> None:
    """Show ``view`` in the cell and, once its run ends, replace it in place with the summary
    card and the curves as plain outputs (``update_display_data``), so that a saved notebook
    keeps the run and holds no widget-only output."""
    from IPython.display import display

    handles = [
        display(view, display_id=True),
        display({"text/plain": ""}, raw=True, display_id=True),
    ]

    def settle(_run: Any) -> None:
        try:
            bundles = view.final_outputs()
        except Exception as err:  # keep the live view rather than lose the run's outputs
            log.warning("live view: cannot summarise run %s: %s", view.run.run_id, err)
            return
        for handle, bundle in zip(handles, bundles, strict=True):
            if handle is not None:
                handle.update(bundle, raw=True)
        view.close_all()

    view.on_done(settle)
    view.start()
