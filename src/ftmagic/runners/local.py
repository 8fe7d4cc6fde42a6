"""The ``local`` backend: ``ftmagic train`` in a separate process that survives the kernel.

The config goes to ``config.yaml`` in the run's folder (``ftmagic-runs/<run_id>/`` next to a SQLite
store), the trainer's output to ``train.log`` beside it (and to the artifact ``logs/train.log``
at the end). The process logs to the tracking URI of the kernel that started it: the
``MLFLOW_TRACKING_URI`` server (for example one started by ``ftmagic server``) or, by default,
the same SQLite file, by absolute path. Any new kernel reattaches with ``ftmagic.get(run_id)``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ftmagic.config import RunConfig
from ftmagic.runners import _process

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run


def submit(config: RunConfig, run_id: str, *, resume: bool = False) -> None:
    """Start training ``run_id`` in a detached process and return at once."""
    from ftmagic.tracking.client import tracking_uri

    uri = _process.absolute_uri(tracking_uri())
    config_path = _process.write_config(config, _process.run_folder(run_id, uri))
    command = [sys.executable, *_process.train_arguments(config_path, run_id, resume=resume)]
    _process.start_detached(command, run_id, uri=uri)


def cancel(run: Run, *, grace_s: float | None = None, wait: bool = False) -> None:
    """Ask the run to stop (MLflow flag); SIGTERM its process if it has not ended after
    ``grace_s`` (default ``$FTMAGIC_CANCEL_GRACE_S`` or 120 s)."""
    run_id = run.run_id
    after = _process.terminate_unless_ended(run_id)
    _process.cancel_with_fallback(run_id, after, grace_s=grace_s, wait=wait)
