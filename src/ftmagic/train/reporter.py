"""What a run tells the world: status, events, metrics, generations, checkpoints, the registered
model, and whether a cancel was asked for.

The loop talks to a ``Reporter``; ``MlflowReporter`` is the one every backend uses (MLflow through
``ftmagic.tracking.store``, with its heartbeat thread and its batched metrics thread). A test can
hand the loop any object with the same methods, e.g. one that records the calls.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ftmagic.errors import RunError

if TYPE_CHECKING:
    from ftmagic.config import RunConfig
    from ftmagic.tracking.state import RunStatus

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
CANCEL_POLL_SECONDS = 3.0


class Reporter(Protocol):
    """The run's voice. Only rank 0 speaks; on other ranks every method is a no-op, so the loop
    calls them unconditionally."""

    def start_heartbeat(self) -> None:
        """Say the run is alive until ``close``."""

    def status(self, status: RunStatus, reason: str | None = None) -> None:
        """Set the run's status (and why)."""

    def event(self, kind: str, message: str, step: int | None = None) -> None:
        """Add an event to the run's timeline."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Log metrics of ``step`` (may be batched until ``flush``)."""

    def flush(self) -> None:
        """Send every metric logged so far."""

    def total_steps(self, total: int) -> None:
        """Record the planned number of steps."""

    def timing(self, estimated: float | None = None) -> None:
        """Record the estimated seconds (at the start), or the seconds taken (at the end)."""

    def cancel_requested(self, stop_event: threading.Event | None) -> bool:
        """Whether the run was asked to stop."""
        ...

    def reproducibility(self, config: RunConfig, resolved: dict[str, Any]) -> None:
        """Record what a rerun needs: the resolved config, data and package versions."""

    def generations(self, step: int, rows: list[dict[str, str]]) -> None:
        """Record the eval prompts' generations at checkpoint ``step``."""

    def scored_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Record the eval_metric's scored sample at checkpoint ``step``."""

    def checkpoint_folder(self, step: int) -> Path:
        """Where to write checkpoint ``step`` before ``commit_checkpoint``."""
        ...

    def commit_checkpoint(self, folder: Path, step: int, meta: dict[str, Any]) -> None:
        """Make the checkpoint written to ``folder`` a committed one."""

    def register(self, folder: Path, name: str) -> str:
        """Register the model saved in ``folder`` as ``name``; returns the registered name."""
        ...

    def close(self) -> None:
        """Stop the heartbeat and send what is left."""


class MlflowReporter:
    """The run's voice in MLflow: status, events, metrics, heartbeat, cancel polling.

    Only rank 0 talks to MLflow (``enabled``); on other ranks every method is a no-op.
    """

    def __init__(self, run_id: str, *, enabled: bool) -> None:
        self.run_id = run_id
        self.enabled = enabled
        self._metrics: Any = None
        self._last_cancel_poll = time.monotonic()
        self._stop_beating = threading.Event()
        self.started = time.monotonic()
        self.estimated_seconds: float | None = None

    @property
    def store(self) -> Any:
        from ftmagic.tracking import store

        return store

    def start_heartbeat(self) -> None:
        """Beat from a daemon thread until ``close``: a slow model load, a long step or a busy
        machine must not make a live run look dead; a killed process stops beating at once."""
        if not self.enabled:
            return

        def beat() -> None:
            while not self._stop_beating.wait(HEARTBEAT_SECONDS):
                try:
                    self.store.heartbeat(self.run_id)
                except Exception as err:  # the next beat retries; training goes on
                    log.warning("heartbeat of run %s failed: %s", self.run_id, err)

        name = f"ftmagic-heartbeat-{self.run_id[:8]}"
        threading.Thread(target=beat, name=name, daemon=True).start()

    def status(self, status: RunStatus, reason: str | None = None) -> None:
        """Set the run's status; the store records it as an event too."""
        log.info("%s %s%s", self.run_id, status, f": {reason}" if reason else "")
        if self.enabled:
            self.store.set_status(self.run_id, status, reason)

    def event(self, kind: str, message: str, step: int | None = None) -> None:
        log.info("%s %s: %s", self.run_id, kind, message)
        if self.enabled:
            self.store.add_event(self.run_id, kind, message, step=step)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._metrics is None:
            self._metrics = self.store.MetricsLogger(self.run_id)
        self._metrics.log(step, values)

    def flush(self) -> None:
        if self._metrics is not None:
            self._metrics.flush()

    def total_steps(self, total: int) -> None:
        if self.enabled:
            self.store.set_tag(self.run_id, self.store.TOTAL_STEPS_TAG, total)

    def timing(self, estimated: float | None = None) -> None:
        """Tag the estimated seconds (at the start), or the seconds taken and the TIMING event
        "estimated X, took Y" (at the end)."""
        from ftmagic.data.estimate import ESTIMATED_TAG, TOOK_TAG, timing_message

        if estimated is not None:
            self.estimated_seconds = estimated
            if self.enabled:
                self.store.set_tag(self.run_id, ESTIMATED_TAG, f"{estimated:.1f}")
            return
        took = time.monotonic() - self.started
        if self.enabled:
            self.store.set_tag(self.run_id, TOOK_TAG, f"{took:.1f}")
        self.event("TIMING", timing_message(self.estimated_seconds, took))

    def cancel_requested(self, stop_event: threading.Event | None) -> bool:
        """The in-process stop event, or MLflow's cancel tag polled every few seconds."""
        if stop_event is not None and stop_event.is_set():
            return True
        now = time.monotonic()
        if not self.enabled or now - self._last_cancel_poll < CANCEL_POLL_SECONDS:
            return False
        self._last_cancel_poll = now
        return bool(self.store.cancel_requested(self.run_id))

    def reproducibility(self, config: RunConfig, resolved: dict[str, Any]) -> None:
        from ftmagic.tracking.reproduce import record

        if self.enabled:
            record(self.run_id, config, resolved)

    def generations(self, step: int, rows: list[dict[str, str]]) -> None:
        if self.enabled:
            self.store.log_generations(self.run_id, step, rows)

    def scored_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.enabled:
            self.store.log_scored_generations(self.run_id, step, rows)

    def checkpoint_folder(self, step: int) -> Path:
        """The store's folder for checkpoint ``step``, as a readable error when it cannot be
        made. With a local artifact store it is the artifact folder itself, so the weights are
        written once."""
        try:
            return Path(self.store.checkpoint_dir(self.run_id, step))
        except OSError as err:
            where = err.filename or f"the folder of checkpoint {step}"
            raise RunError(
                f"cannot write checkpoint folder {where}: {err.strerror or err}. Fix: make it "
                "writable or free some space; earlier checkpoints are intact"
            ) from None

    def commit_checkpoint(self, folder: Path, step: int, meta: dict[str, Any]) -> None:
        """Commit the written ``folder`` (the ``COMPLETE`` marker is written last); a staging
        folder for a remote store is removed after the upload."""
        self.flush()
        store = self.store
        store.commit_checkpoint(self.run_id, folder, step, meta)
        if store.local_artifact_dir(store.client(), self.run_id) is None:
            shutil.rmtree(folder, ignore_errors=True)

    def register(self, folder: Path, name: str) -> str:
        run_name = str(self.store.client().get_run(self.run_id).info.run_name)
        return str(self.store.register_model(self.run_id, folder, name, run_name))

    def close(self) -> None:
        self._stop_beating.set()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
