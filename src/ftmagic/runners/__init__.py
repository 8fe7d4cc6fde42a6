"""Runners: where a run trains. Each backend is a module ``ftmagic.runners.<backend>`` with
``submit(config, run_id, *, resume=False)`` and, optionally, ``cancel(run)``.

``launch`` makes the MLflow run first, so a run exists (PENDING) before any backend starts, and a
backend that fails to start leaves a FAILED run with the reason rather than nothing.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from ftmagic.config import RunConfig
from ftmagic.errors import FtmagicError, RunError

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run

log = logging.getLogger(__name__)


def backend_module(backend: str) -> ModuleType:
    """The module that runs ``backend`` (``inkernel``, ``local``, ``torchrun``, ``ray``)."""
    try:
        return importlib.import_module(f"ftmagic.runners.{backend}")
    except ImportError as err:
        raise RunError(
            f"backend '{backend}' cannot start: {err}. Fix: install what it needs or choose "
            "another backend (inkernel, local, torchrun, ray)"
        ) from None


def launch(config: RunConfig) -> Run:
    """Create the run in MLflow and hand it to ``config.backend``; returns the run at once."""
    from ftmagic.tracking import state
    from ftmagic.tracking.run import get_run

    run_id = state.create_run(config, backend=config.backend)
    _submit(config, run_id, resume=False)
    return get_run(run_id)


def cancel(run: Run) -> Run:
    """Ask ``run`` to stop: through its backend when it has a way, else through MLflow (the
    trainer polls the cancel tag and ends STOPPED with a final checkpoint)."""
    from ftmagic.tracking import state

    backend = getattr(run, "backend", None) or run.config.backend
    module = backend_module(backend)
    if hasattr(module, "cancel"):
        module.cancel(run)
    else:
        state.request_cancel(run.run_id, uri=run.tracking_uri)
    run.refresh()
    return run


def resume(run: Run, backend: str | None = None) -> Run:
    """Continue ``run`` from its last committed checkpoint, on ``backend`` or the run's own."""
    from ftmagic.tracking.state import TERMINAL, RunStatus, set_status

    if run.status not in TERMINAL and run.status != RunStatus.PENDING:
        raise RunError(
            f"run {run.run_id} is {run.status}: only a stopped, failed or killed run resumes. "
            "Fix: cancel it first, or wait for it to end"
        )
    config = run.config if backend is None else run.config.replace(backend=backend)
    set_status(run.run_id, RunStatus.PENDING, "resuming from the last checkpoint")
    _submit(config, run.run_id, resume=True)
    run.refresh()
    return run


def _submit(config: RunConfig, run_id: str, *, resume: bool) -> None:
    from ftmagic.tracking.state import RunStatus, set_status

    try:
        backend_module(config.backend).submit(config, run_id, resume=resume)
    except FtmagicError as err:
        set_status(run_id, RunStatus.FAILED, str(err))
        raise
    except Exception as err:
        log.exception("backend %s could not start run %s", config.backend, run_id)
        set_status(run_id, RunStatus.FAILED, f"backend {config.backend} could not start: {err}")
        raise RunError(f"backend {config.backend} could not start run {run_id}: {err}") from err
