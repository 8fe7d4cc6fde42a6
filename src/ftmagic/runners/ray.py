"""The ``ray`` backend: a Ray Job that runs the trainer, with Ray Train for several workers.

The job is submitted through the Ray Jobs API (``JobSubmissionClient``) to ``config.ray_address``,
``RAY_ADDRESS`` or ``http://127.0.0.1:8265``. Its ``runtime_env`` carries everything the job needs:
the config as YAML, the run id and the tracking URI (which must be reachable from the cluster:
a server such as ``ftmagic server``, not a notebook's SQLite file, unless the cluster is this
machine). The entrypoint ``python -m ftmagic.runners.ray_entry`` runs the trainer, under Ray
Train's ``TorchTrainer`` when ``num_processes > 1``. Ray is optional: ``pip install ftmagic[ray]``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ftmagic.config import RunConfig
from ftmagic.errors import RunError

if TYPE_CHECKING:
    from ftmagic.tracking.run import Run

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
JOB_TAG = "ftmagic.ray_job_id"
ADDRESS_TAG = "ftmagic.ray_address"
CONFIG_ENV = "FTMAGIC_CONFIG_YAML"
RUN_ID_ENV = "FTMAGIC_RUN_ID"
RESUME_ENV = "FTMAGIC_RESUME"
ENTRYPOINT = "python -m ftmagic.runners.ray_entry"
INSTALL_HINT = "pip install ftmagic[ray]"
JOB_EXIT_GRACE_S = 30.0


def job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address``; a clear error when Ray is not installed."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise RunError(
            "backend 'ray' needs Ray, which is not installed. Fix: "
            f"{INSTALL_HINT} (or pip install 'ray[default]'), or choose another backend "
            "(inkernel, local, torchrun)"
        ) from None
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RunError(
            f"cannot reach the Ray cluster at {address}: {err}. Fix: start one (ray start --head "
            "--include-dashboard true --dashboard-host 127.0.0.1) or set ray_address / "
            "RAY_ADDRESS to its dashboard address (http://HOST:8265)"
        ) from None


def address_of(config: RunConfig) -> str:
    return config.ray_address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def runtime_env(config: RunConfig, run_id: str, *, resume: bool, uri: str) -> dict[str, Any]:
    """What crosses to the cluster: the config as YAML, the run id and the tracking URI."""
    env_vars = {
        CONFIG_ENV: config.to_yaml(),
        RUN_ID_ENV: run_id,
        RESUME_ENV: "1" if resume else "0",
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("MLFLOW_REGISTRY_URI", "FTMAGIC_CACHE"):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    return {"env_vars": env_vars}


def submit(config: RunConfig, run_id: str, *, resume: bool = False) -> None:
    """Submit the run as a Ray Job and record its job id; returns at once."""
    from ftmagic.runners import _process
    from ftmagic.tracking import state
    from ftmagic.tracking.client import set_tags, tracking_uri

    address = address_of(config)
    client = job_client(address)
    uri = _process.absolute_uri(tracking_uri())
    if not uri.startswith(("http://", "https://", "databricks")):
        log.warning(
            "run %s: the Ray job logs to %s, which only works when the cluster runs on this "
            "machine; point MLFLOW_TRACKING_URI at a server (ftmagic server) for a real cluster",
            run_id,
            uri,
        )
    attempt = 1 + sum(e.type == "SUBMITTED" for e in state.read_events(run_id, uri=uri))
    job_id = client.submit_job(
        entrypoint=ENTRYPOINT,
        runtime_env=runtime_env(config, run_id, resume=resume, uri=uri),
        submission_id=f"ftmagic-{run_id}-{attempt}",
        metadata={"ftmagic_run_id": run_id},
    )
    set_tags(run_id, {JOB_TAG: job_id, ADDRESS_TAG: address}, uri=uri)
    state.add_event(run_id, "SUBMITTED", f"Ray job {job_id} submitted to {address}", uri=uri)


def job_of(run: Run) -> tuple[str, str] | None:
    """The run's latest Ray job id and cluster address, if it was submitted to Ray."""
    from ftmagic.tracking.client import run_tags

    tags = run_tags(run.run_id, uri=run.tracking_uri)
    job_id = tags.get(JOB_TAG)
    return (job_id, tags.get(ADDRESS_TAG) or DEFAULT_ADDRESS) if job_id else None


def cancel(run: Run, *, grace_s: float | None = None, wait: bool = False) -> None:
    """Set the cancel flag (the trainer stops after its step with a checkpoint, STOPPED), then
    make sure the Ray job ends: ``stop_job`` when the run has not ended within ``grace_s``, or
    when its job is still up ``JOB_EXIT_GRACE_S`` after the run ended."""
    from ftmagic.runners import _process

    found = job_of(run)

    def after(ended: bool) -> None:
        if found is None:
            return
        job_id, address = found
        try:
            client = job_client(address)
            if ended and _wait_job_end(client, job_id, JOB_EXIT_GRACE_S):
                return
            client.stop_job(job_id)
        except Exception as err:  # the job may have ended or the cluster gone: nothing to stop
            log.info("run %s: could not stop Ray job %s: %s", run.run_id, job_id, err)

    _process.cancel_with_fallback(run.run_id, after, grace_s=grace_s, wait=wait)


def _wait_job_end(client: Any, job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_job_status(job_id).is_terminal():
            return True
        time.sleep(1.0)
    return False


def job_status(run: Run) -> str | None:
    """The Ray job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), or None."""
    found = job_of(run)
    if found is None:
        return None
    job_id, address = found
    return str(job_client(address).get_job_status(job_id).value)
