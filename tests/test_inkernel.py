"""The in-kernel backend: ``launch`` returns at once while a daemon thread trains; cancel stops it
with a final committed checkpoint; resume finishes it."""

from __future__ import annotations

import time
from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config, losses_of
from fixtures_ui import kernel_spec
from ftmagic import runners
from ftmagic.runners import inkernel

train_env = fixtures_train.train_env
__all__ = ["kernel_spec"]


def wait_for_steps(run_id: str, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(losses_of(run_id)) < steps:
        assert time.monotonic() < deadline, f"fewer than {steps} steps logged in time"
        time.sleep(0.2)


def test_launch_trains_in_a_background_thread(train_env: dict[str, Any]) -> None:
    run = runners.launch(fast_config(train_env, training_duration="4ba", backend="inkernel"))
    assert run.status in ("PENDING", "RUNNING")
    assert run.run_id in inkernel.running()  # the call returned while the thread trains
    assert inkernel.join(run.run_id, timeout=120)
    assert inkernel.running() == []
    run.refresh()
    assert run.status == "COMPLETED"
    assert [c.step for c in run.checkpoints] == [4]
    types = [e.type for e in run.events]
    assert types[0] == "CREATED" and types[-1] == "COMPLETED"
    assert types.index("TRAIN_STARTED") < types.index("CHECKPOINT_SAVED")


def test_cancel_then_resume(train_env: dict[str, Any]) -> None:
    config = fast_config(
        train_env, training_duration="400ba", checkpoint_interval="1000ba", backend="inkernel"
    )
    run = runners.launch(config)
    wait_for_steps(run.run_id, 2)
    runners.cancel(run)
    assert inkernel.join(run.run_id, timeout=120)
    run.refresh()
    assert run.status == "STOPPED"
    logged = max(losses_of(run.run_id))
    assert 2 <= logged < 400
    assert [c.step for c in run.checkpoints] == [logged]  # the final checkpoint at the stop

    run = runners.resume(run)
    assert inkernel.join(run.run_id, timeout=300)
    run.refresh()
    assert run.status == "COMPLETED"
    assert [c.step for c in run.checkpoints] == [logged, 400]
    assert sorted(losses_of(run.run_id)) == list(range(1, 401))


def test_launching_the_same_run_twice_is_refused(train_env: dict[str, Any]) -> None:
    from ftmagic.errors import RunError
    from ftmagic.tracking import store

    config = fast_config(train_env, training_duration="30ba", backend="inkernel")
    run_id = store.create_run(config, backend="inkernel")
    inkernel.submit(config, run_id)
    try:
        inkernel.submit(config, run_id)
        raised = False
    except RunError as err:
        raised = "already training" in str(err)
    finally:
        store.request_cancel(run_id)
        inkernel.join(run_id, timeout=120)
    assert raised


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_fails_within_10_s_of_its_kernel_shutting_down(
    train_env: dict[str, Any], kernel_spec: str
) -> None:
    from jupyter_client.manager import start_new_kernel

    from ftmagic.tracking.run import get_run

    config = fast_config(
        train_env, training_duration="400ba", checkpoint_interval="1000ba", backend="inkernel"
    )
    code = (
        "import ftmagic\nfrom ftmagic.config import RunConfig\n"
        f"run = ftmagic.create(RunConfig.from_yaml({config.to_yaml()!r}))\nprint(run.run_id)"
    )
    manager, client = start_new_kernel(kernel_name=kernel_spec, cwd=str(train_env["root"]))
    printed: list[str] = []
    try:
        reply = client.execute_interactive(
            code,
            timeout=120,
            output_hook=lambda m: printed.append(m["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        run_id = "".join(printed).strip()
        wait_for_steps(run_id, 1)
        run = get_run(run_id)
        assert run.recorded_status == "RUNNING"
        assert run._tags[inkernel.OWNER_TAG].startswith("inkernel ")
    finally:
        client.stop_channels()
        started = time.monotonic()
        manager.shutdown_kernel(now=False)
    while run.refresh().recorded_status == "RUNNING" and time.monotonic() - started < 10:
        time.sleep(0.2)
    assert (run.recorded_status, run.status_reason) == ("FAILED", inkernel.KERNEL_STOPPED)
    assert time.monotonic() - started < 10
