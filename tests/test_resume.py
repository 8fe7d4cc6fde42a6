"""Resume is exact: a run killed (SIGKILL) or stopped after a checkpoint continues with the very
losses an uninterrupted run with the same seed has."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config, losses_of
from ftmagic.config import RunConfig
from ftmagic.train.trainer import StepReport, train

train_env = fixtures_train.train_env

CHILD = (
    "import sys; from ftmagic.config import RunConfig; "
    "from ftmagic.train.cli import train_command; "
    "sys.exit(train_command(RunConfig.from_file(sys.argv[1]), run_id=sys.argv[2]))"
)


def new_run(config: RunConfig) -> str:
    from ftmagic.tracking import store

    return str(store.create_run(config, backend="local"))


def recording(losses: dict[int, float]) -> Any:
    def hook(report: StepReport) -> None:
        losses[report.step] = report.loss

    return hook


def wait_for_checkpoint(run_id: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    from ftmagic.tracking import store

    deadline = time.monotonic() + timeout
    while not store.list_checkpoints(run_id):
        assert proc.poll() is None, "the training process ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)


STEPS = 40


def test_killed_run_resumes_exactly(train_env: dict[str, Any]) -> None:
    from ftmagic.tracking import store

    # Long enough that the kill lands before the end even when polling lags on a busy machine.
    config = fast_config(train_env, training_duration=f"{STEPS}ba", checkpoint_interval="3ba")
    reference = train(config, new_run(config))
    assert reference.status == "COMPLETED", reference.reason
    expected = losses_of(reference.run_id)

    run_id = new_run(config)
    path = train_env["root"] / "resume.yaml"
    path.write_text(config.to_yaml())
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), run_id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        wait_for_checkpoint(run_id, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = store.list_checkpoints(run_id)[-1].step
    assert killed_at < STEPS
    assert fixtures_train.status_of(run_id) == "RUNNING"  # killed: nobody said otherwise

    resumed: dict[int, float] = {}
    result = train(config, run_id, resume=True, progress=recording(resumed))
    assert result.status == "COMPLETED", result.reason
    assert result.steps == STEPS and result.tokens == reference.tokens
    assert sorted(resumed) == list(range(killed_at + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step
    assert [c.step for c in store.list_checkpoints(run_id)][-1] == STEPS


def test_stopped_lora_run_with_dropout_resumes_exactly(train_env: dict[str, Any]) -> None:
    """LoRA dropout draws random numbers every step: the RNG state must come back too."""
    config = fast_config(
        train_env, method="lora", lora_rank=4, lora_dropout=0.2, training_duration="7ba"
    )
    expected: dict[int, float] = {}
    assert train(config, new_run(config), progress=recording(expected)).status == "COMPLETED"

    run_id = new_run(config)
    stop = threading.Event()

    def stop_at_three(report: StepReport) -> None:
        if report.step == 3:
            stop.set()

    first = train(config, run_id, stop_event=stop, progress=stop_at_three)
    assert first.status == "STOPPED" and first.last_checkpoint_step == 3
    resumed: dict[int, float] = {}
    result = train(config, run_id, resume=True, progress=recording(resumed))
    assert result.status == "COMPLETED", result.reason
    assert sorted(resumed) == [4, 5, 6, 7]
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-4), step
    assert len({round(v, 6) for v in expected.values()}) == 7  # dropout really varies the losses


def test_resume_refuses_changed_batches(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, training_duration="2ba", checkpoint_interval="1ba")
    run_id = new_run(config)
    stop = threading.Event()
    stop.set()
    assert train(config, run_id, stop_event=stop).status == "STOPPED"
    changed = config.replace(tokens_per_batch=1024)
    result = train(changed, run_id, resume=True)
    assert result.status == "FAILED"
    assert "changed since the checkpoint" in str(result.reason)
