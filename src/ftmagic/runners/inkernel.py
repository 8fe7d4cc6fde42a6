"""The in-kernel backend: ``train`` in a daemon thread of this process, so the notebook stays
responsive while the live view reads progress from MLflow.

The one piece of module state is ``_JOBS``, a registry of this process's training threads keyed by
run id: it is how ``cancel`` finds the ``threading.Event`` of a run started here. Entries are
removed when their thread ends, so it only ever holds the runs training right now.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftmagic.config import RunConfig
from ftmagic.errors import RunError

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A run training in a thread of this process."""

    run_id: str
    thread: threading.Thread
    stop: threading.Event


_JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()


def submit(config: RunConfig, run_id: str, *, resume: bool = False) -> None:
    """Start training ``run_id`` in a daemon thread and return at once."""
    with _JOBS_LOCK:
        job = _JOBS.get(run_id)
        if job is not None and job.thread.is_alive():
            raise RunError(f"run {run_id} is already training in this kernel")
        stop = threading.Event()
        thread = threading.Thread(
            target=_run,
            name=f"ftmagic-{run_id[:8]}",
            args=(config, run_id, stop, resume),
            daemon=True,
        )
        _JOBS[run_id] = Job(run_id, thread, stop)
    thread.start()


def _run(config: RunConfig, run_id: str, stop: threading.Event, resume: bool) -> None:
    from ftmagic.train.trainer import train

    try:
        train(config, run_id, stop_event=stop, resume=resume)
    finally:
        with _JOBS_LOCK:
            _JOBS.pop(run_id, None)


def cancel(run: Run) -> None:
    """Stop a run: its thread's event when it trains here, and the MLflow cancel tag for any
    other process watching or training it."""
    from ftmagic.tracking import store

    job = _JOBS.get(run.run_id)
    if job is not None:
        job.stop.set()
    store.request_cancel(run.run_id, uri=run.tracking_uri)


def running() -> list[str]:
    """Run ids training in this process now."""
    with _JOBS_LOCK:
        return [run_id for run_id, job in _JOBS.items() if job.thread.is_alive()]


def join(run_id: str, timeout: float | None = None) -> bool:
    """Wait for ``run_id``'s thread to end; True when it has (or never trained here)."""
    job = _JOBS.get(run_id)
    if job is None:
        return True
    job.thread.join(timeout)
    return not job.thread.is_alive()
