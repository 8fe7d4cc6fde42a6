"""The ``torchrun`` backend: ``config.num_processes`` trainer processes on this machine.

``torchrun --standalone`` starts the processes and their rendezvous; each runs ``ftmagic train``,
which joins the process group (gloo on CPUs, NCCL on GPUs, where the model is sharded with FSDP2).
Only rank 0 talks to MLflow. The launch is detached like the ``local`` backend (same run folder,
log and supervisor), so it survives the kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ftmagic.config import RunConfig
from ftmagic.runners import _process

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run


def command(config: RunConfig, config_path: Path, run_id: str, *, resume: bool) -> list[str]:
    """``python -m torch.distributed.run --nproc-per-node N --standalone -m ftmagic.cli train``."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(config.num_processes),
        "--standalone",
    ]
    return [*launcher, *_process.train_arguments(config_path, run_id, resume=resume)]


def submit(config: RunConfig, run_id: str, *, resume: bool = False) -> None:
    """Start ``config.num_processes`` trainer processes under torchrun and return at once."""
    from ftmagic.tracking.client import tracking_uri

    uri = _process.absolute_uri(tracking_uri())
    config_path = _process.write_config(config, _process.run_folder(run_id, uri))
    _process.start_detached(command(config, config_path, run_id, resume=resume), run_id, uri=uri)


def cancel(run: Run, *, grace_s: float | None = None, wait: bool = False) -> None:
    """Ask the run to stop (MLflow flag, seen by rank 0 and agreed by all ranks); SIGTERM
    torchrun (which passes it to every worker) if it has not ended after ``grace_s``."""
    run_id = run.run_id
    after = _process.terminate_unless_ended(run_id)
    _process.cancel_with_fallback(run_id, after, grace_s=grace_s, wait=wait)
