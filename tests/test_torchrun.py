"""The ``torchrun`` backend: two real CPU processes (DDP over gloo) train one run, rank 0 alone
records it, and its checkpoint resumes in a single process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ftmagic
from fixtures_runners import kill_started_runs, metric_steps, tags_of, tiny_config, write_data
from ftmagic.runners import _process, torchrun
from ftmagic.tracking import store

RUN_TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _no_trainer_left_behind(mlflow_store: str) -> Iterator[None]:
    yield
    kill_started_runs(mlflow_store)


def test_command_runs_ftmagic_train_under_torchrun(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "d.jsonl", backend="torchrun", num_processes=3)
    command = torchrun.command(config, tmp_path / "c.yaml", "a" * 32, resume=True)
    assert command[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node", "3", "--standalone"]
    assert command[6:] == [
        *["-m", "ftmagic.cli", "train", str(tmp_path / "c.yaml")],
        *["--run-id", "a" * 32, "--resume"],
    ]


def _losses(run_id: str) -> dict[int, float]:
    history = store.client().get_metric_history(run_id, "train/loss")
    return {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


def test_two_processes_train_one_run_that_resumes_in_one_process(
    mlflow_store: str, tmp_path: Path
) -> None:
    config = tiny_config(write_data(tmp_path), backend="torchrun", num_processes=2)
    run = ftmagic.create(config).wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "COMPLETED", run.status_reason
    # Rank 0 alone logs: one value per step, one set of checkpoints, one COMPLETED event.
    assert metric_steps(run.run_id) == [1, 2, 3, 4]
    assert [c.step for c in run.checkpoints] == [2, 4]
    assert [e.type for e in run.events].count("COMPLETED") == 1
    assert tags_of(run.run_id)["ftmagic.backend"] == "torchrun"
    log_text = Path(tags_of(run.run_id)[_process.LOG_TAG]).read_text(encoding="utf-8")
    assert log_text.count(f"run {run.run_id}: COMPLETED") == 1  # rank 0's summary only
    two_process = _losses(run.run_id)

    # The last checkpoint was never committed (the process died while writing it): the run is
    # resumed from step 2 by one process in this kernel, with the checkpoint DDP's rank 0 wrote.
    artifacts = store.local_artifact_dir(store.client(), run.run_id)
    assert artifacts is not None
    (artifacts / store.checkpoint_path(4) / store.COMPLETE).unlink()
    store.set_status(run.run_id, "FAILED", "killed while writing checkpoint 4")
    assert [c.step for c in ftmagic.get(run.run_id).checkpoints] == [2]

    ftmagic.resume(run, backend="inkernel")
    run.wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "COMPLETED", run.status_reason
    assert [c.step for c in run.checkpoints] == [2, 4]
    assert any("resumed after step 2" in e.message for e in run.events)
    one_process = _losses(run.run_id)
    # Same global batches, same weights at step 2: one process repeats the two-process losses.
    for step in (3, 4):
        assert one_process[step] == pytest.approx(two_process[step], abs=2e-3)
