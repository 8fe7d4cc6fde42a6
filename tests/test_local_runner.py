"""The ``local`` backend: real detached ``ftmagic train`` processes logging to a SQLite store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import ftmagic
from fixtures_runners import (
    kill_started_runs,
    metric_steps,
    tags_of,
    tiny_config,
    write_data,
)
from fixtures_tracking import free_port, start_mlflow_server, stop
from ftmagic.runners import _process
from ftmagic.tracking import store
from polling import wait_until

RUN_TIMEOUT_S = 150


@pytest.fixture(autouse=True)
def _no_trainer_left_behind(mlflow_store: str) -> Iterator[None]:
    yield
    kill_started_runs(mlflow_store)


def _kernel_script(data: Path) -> str:
    """A stand-in for a notebook kernel: it starts a local run, says its id, then idles."""
    return textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import ftmagic
        from fixtures_runners import tiny_config
        run = ftmagic.create(tiny_config({str(data)!r}, backend="local"))
        print(run.run_id, flush=True)
        time.sleep(600)
        """
    )


def test_run_survives_its_kernel_and_a_new_kernel_reattaches(
    mlflow_store: str, tmp_path: Path
) -> None:
    data = write_data(tmp_path)
    kernel = subprocess.Popen(
        [sys.executable, "-c", _kernel_script(data)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert kernel.stdout is not None
        run_id = kernel.stdout.readline().strip()
    finally:
        kernel.kill()  # the kernel dies the hard way, right after starting the run
        kernel.wait()
    assert len(run_id) == 32, run_id

    run = ftmagic.get(run_id).wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "COMPLETED"
    assert metric_steps(run_id) == [1, 2, 3, 4]
    assert [c.step for c in run.checkpoints] == [2, 4]

    tags = tags_of(run_id)
    assert tags["ftmagic.backend"] == "local"
    folder = Path(tags[_process.LOG_TAG]).parent
    assert folder == tmp_path / "ftmagic-runs" / run_id
    assert ftmagic.RunConfig.from_file(folder / "config.yaml") == tiny_config(data, backend="local")
    artifact = store.local_artifact_dir(store.client(), run_id)
    assert artifact is not None
    logged = wait_until(lambda: _read(artifact / "logs" / "train.log"), 60, "logs/train.log")
    assert f"run {run_id}: COMPLETED" in logged


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def test_cancel_stops_after_a_step_with_a_checkpoint(mlflow_store: str, tmp_path: Path) -> None:
    config = tiny_config(write_data(tmp_path), backend="local", training_duration="400ba")
    config = config.replace(checkpoint_interval="1000ba")
    run = ftmagic.create(config)
    wait_until(lambda: metric_steps(run.run_id), RUN_TIMEOUT_S, "the first step")
    ftmagic.cancel(run)
    run.wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "STOPPED"
    steps = metric_steps(run.run_id)
    assert 1 <= len(steps) < 400 and steps == list(range(1, len(steps) + 1))
    assert [c.step for c in run.checkpoints] == [steps[-1]]  # the stop wrote the only checkpoint
    assert "CANCEL_REQUESTED" in [e.type for e in run.events]


def test_killed_run_is_found_dead_and_resumes_from_its_checkpoint(
    mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ftmagic.tracking.run as run_module

    monkeypatch.setattr(run_module, "HEARTBEAT_TIMEOUT_S", 8.0)
    config = tiny_config(write_data(tmp_path), backend="local", training_duration="6ba")
    run = ftmagic.create(config)
    wait_until(lambda: store.list_checkpoints(run.run_id), RUN_TIMEOUT_S, "a checkpoint")
    # The whole session (supervisor and trainer) dies: nothing is left to record the end.
    os.killpg(int(tags_of(run.run_id)[_process.PID_TAG]), signal.SIGKILL)
    wait_until(lambda: run.refresh().status == "FAILED", 60, "heartbeat loss")
    assert run.recorded_status == "RUNNING" and run.status_reason == "heartbeat lost"
    kept = max(c.step for c in run.checkpoints)

    ftmagic.resume(run)
    # Back to the real timeout: the resumed trainer's first beat comes after it loads the model.
    monkeypatch.setattr(run_module, "HEARTBEAT_TIMEOUT_S", 120.0)
    run.wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "COMPLETED"
    assert set(metric_steps(run.run_id)) == set(range(1, 7))
    assert max(c.step for c in run.checkpoints) == 6
    assert any(f"resumed after step {kept}" in e.message for e in run.events)


def test_supervisor_marks_a_trainer_that_dies_failed_at_once(
    mlflow_store: str, tmp_path: Path
) -> None:
    run_id = store.create_run(tiny_config(write_data(tmp_path)), backend="local")
    store.set_status(run_id, "RUNNING")
    die = "import os, signal; print('working', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    pid = _process.start_detached([sys.executable, "-c", die], run_id)
    wait_until(lambda: tags_of(run_id)[store.STATUS_TAG] == "FAILED", 60, "FAILED")
    run = ftmagic.get(run_id)
    assert run.status_reason == "the trainer was killed by SIGKILL before the run ended"
    assert tags_of(run_id)[_process.PID_TAG] == str(pid)
    artifact = store.local_artifact_dir(store.client(), run_id)
    assert artifact is not None
    logged = wait_until(lambda: _read(artifact / "logs" / "train.log"), 60, "logs/train.log")
    assert "working" in logged


def test_cancel_falls_back_to_sigterm_when_the_flag_is_not_honoured(
    mlflow_store: str, tmp_path: Path
) -> None:
    run_id = store.create_run(tiny_config(write_data(tmp_path)), backend="local")
    store.set_status(run_id, "RUNNING")
    # A "trainer" that never reads MLflow and only stops on SIGTERM, reporting how it stopped.
    trainer = textwrap.dedent(
        f"""
        import signal, sys, time
        from ftmagic.tracking import store
        signal.signal(signal.SIGTERM, lambda *a: (
            store.set_status({run_id!r}, "STOPPED", "got SIGTERM"), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    _process.start_detached([sys.executable, "-c", trainer], run_id)
    log_file = Path(tags_of(run_id)[_process.LOG_TAG])
    wait_until(lambda: "ready" in log_file.read_text(), 60, "the trainer to start")
    ftmagic.get(run_id)
    from ftmagic.runners import local

    local.cancel(ftmagic.get(run_id), grace_s=1.0, wait=True)
    run = ftmagic.get(run_id).wait(timeout=60)
    assert (run.status, run.status_reason) == ("STOPPED", "got SIGTERM")
    assert store.cancel_requested(run_id)


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(400)
def test_supervisor_exits_on_sigterm_while_the_server_is_down(
    mlflow_store: str, tmp_path: Path
) -> None:
    """The trainer has exited and the tracking server is gone, so the supervisor is stuck
    retrying its last writes: SIGTERM must still end it."""
    port = free_port()
    server = start_mlflow_server(tmp_path / "server.db", tmp_path / "art", port, tmp_path / "log")
    uri = f"http://127.0.0.1:{port}"
    go = tmp_path / "go"
    trainer = "import os, pathlib, time\nprint('trainer', os.getpid(), flush=True)\n" + (
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)"
    )
    try:
        run_id = store.create_run(tiny_config(write_data(tmp_path)), backend="local", uri=uri)
        store.set_status(run_id, "RUNNING", uri=uri)
        supervisor = _process.start_detached([sys.executable, "-c", trainer], run_id, uri=uri)
        log_file = Path(tags_of(run_id, uri)[_process.LOG_TAG])
    finally:
        stop(server)
    try:
        line = wait_until(lambda: _line_starting(log_file, "trainer "), 120, "the trainer")
        go.touch()  # the trainer exits; the supervisor now tries to record it
        wait_until(lambda: _ended(int(line.split()[1])), 60, "the trainer to exit")
        time.sleep(2)
        assert not _ended(supervisor)
        os.kill(supervisor, signal.SIGTERM)
        wait_until(lambda: _ended(supervisor), 20, "the supervisor to exit on SIGTERM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor, signal.SIGKILL)


def _line_starting(path: Path, prefix: str) -> str | None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return next((line for line in text.splitlines() if line.startswith(prefix)), None)


def test_relative_sqlite_uri_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        _process.absolute_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    )
    assert _process.absolute_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert _process.absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert _process.exit_description(3) == "the trainer exited with code 3"
    assert _process.exit_description(-15) == "the trainer was killed by SIGTERM"
