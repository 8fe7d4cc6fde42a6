"""The entrypoint of an ftmagic Ray Job: ``python -m ftmagic.runners.ray_entry``.

It reads the config, run id and resume flag from the job's ``runtime_env`` (see
``ftmagic.runners.ray``) and runs the one trainer: in this process for one worker, or under Ray
Train's ``TorchTrainer`` for ``num_processes`` workers, where Ray Train makes the process group
that ``ftmagic.train.distributed.setup`` then reuses (gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ftmagic.config import RunConfig
from ftmagic.runners.ray import CONFIG_ENV, RESUME_ENV, RUN_ID_ENV

log = logging.getLogger(__name__)


def job_arguments() -> tuple[RunConfig, str, bool]:
    """The config, run id and resume flag the job was submitted with."""
    missing = [name for name in (CONFIG_ENV, RUN_ID_ENV) if not os.environ.get(name)]
    if missing:
        raise SystemExit(
            f"ftmagic ray job: {', '.join(missing)} not set; submit runs with backend 'ray' "
            "(ftmagic.create(..., backend='ray')) rather than running this module by hand"
        )
    config = RunConfig.from_yaml(os.environ[CONFIG_ENV], source=f"${CONFIG_ENV}")
    return config, os.environ[RUN_ID_ENV], os.environ.get(RESUME_ENV) == "1"


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the trainer, in the process group Ray Train set up."""
    from ftmagic.train.trainer import train

    config = RunConfig.from_yaml(loop_config["config_yaml"], source="ray train loop config")
    train(config, loop_config["run_id"], resume=bool(loop_config["resume"]))


def run_ray_train(config: RunConfig, run_id: str, *, resume: bool) -> int:
    """``num_processes`` Ray Train workers, GPUs when the cluster has them."""
    import ray
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from ftmagic.tracking.state import RunStatus, read_status

    ray.init(ignore_reinit_error=True)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config_yaml": config.to_yaml(), "run_id": run_id, "resume": resume},
        scaling_config=ScalingConfig(num_workers=config.num_processes, use_gpu=use_gpu),
        run_config=RayRunConfig(name=f"ftmagic-{run_id}"),
    )
    try:
        trainer.fit()
    except Exception as err:  # a worker died: record it unless the trainer already did
        log.exception("run %s: Ray Train failed", run_id)
        _record_failure(run_id, f"Ray Train failed: {type(err).__name__}: {err}")
    return 1 if read_status(run_id) is RunStatus.FAILED else 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config, run_id, resume = job_arguments()
    try:
        if config.num_processes > 1:
            return run_ray_train(config, run_id, resume=resume)
        from ftmagic.train.cli import train_command

        # SIGTERM (stop_job) stops after the current step with a checkpoint, as `ftmagic train`.
        return train_command(config, run_id=run_id, resume=resume)
    except Exception as err:  # the job failed before or around the trainer: say so in MLflow
        log.exception("run %s: the Ray job failed", run_id)
        _record_failure(run_id, f"the Ray job failed: {type(err).__name__}: {err}")
        return 1


def _record_failure(run_id: str, reason: str) -> None:
    from ftmagic.tracking.state import TERMINAL, RunStatus, read_status, set_status

    try:
        if read_status(run_id) not in TERMINAL:
            set_status(run_id, RunStatus.FAILED, reason)
    except Exception:
        log.exception("run %s: could not record the failure", run_id)


if __name__ == "__main__":
    sys.exit(main())
