"""The in-kernel backend: ``train`` in a daemon thread of this process, so the notebook stays
responsive while the live view reads progress from MLflow.

The one piece of module state is ``_JOBS``, a registry of this process's training threads keyed by
run id: it is how ``cancel`` finds the ``threading.Event`` of a run started here. Entries are
removed when their thread ends, so it only ever holds the runs training right now.

A run dies with its kernel. So that nobody watches a dead run for the heartbeat timeout, each run
is tagged with the process that owns it (``ftmagic.owner``: ``inkernel <host> <pid>``), and an
exit hook marks the runs still training FAILED ("kernel stopped") when the kernel shuts down or
restarts.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
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
_EXIT_HOOK: list[bool] = []  # one entry once the exit hook is registered

OWNER_TAG = "ftmagic.owner"
KERNEL_STOPPED = "kernel stopped"


def owner() -> str:
    """This process, as the owner tag names it."""
    return f"inkernel {socket.gethostname()} {os.getpid()}"


def submit(config: RunConfig, run_id: str, *, resume: bool = False) -> None:
    """Start training ``run_id`` in a daemon thread and return at once."""
    from ftmagic.tracking.client import set_tag

    _register_exit_hook()
    set_tag(run_id, OWNER_TAG, owner())
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
    from ftmagic.tracking import state

    job = _JOBS.get(run.run_id)
    if job is not None:
        job.stop.set()
    state.request_cancel(run.run_id, uri=run.tracking_uri)


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


def _register_exit_hook() -> None:
    with _JOBS_LOCK:
        if not _EXIT_HOOK:
            atexit.register(mark_stopped_kernel)
            _EXIT_HOOK.append(True)


def mark_stopped_kernel() -> None:
    """Mark every run still training in this process FAILED: the process is exiting, and its
    daemon threads end with it."""
    from ftmagic.tracking import state

    for run_id in running():
        try:
            state.set_status(run_id, state.RunStatus.FAILED, KERNEL_STOPPED)
        except Exception as err:  # the store may be gone too; the heartbeat timeout remains
            log.warning("could not mark run %s failed at exit: %s", run_id, err)
