"""The ``ray`` backend against a real Ray head on 127.0.0.1 (Jobs API through its dashboard), with
MLflow through a real ``ftmagic server``: a run under Ray Train completes, another is cancelled."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ftmagic
from fixtures_runners import (
    free_port,
    ftmagic_server,
    metric_steps,
    tags_of,
    tiny_config,
    write_data,
)
from ftmagic.errors import RunError
from ftmagic.runners import ray as ray_runner
from polling import wait_until

RAY_READY_S = 180
RUN_TIMEOUT_S = 300


def _ray_processes(root_pid: int, temp_dir: str) -> list[object]:
    """The ``ray start`` process, its descendants and anything else using our temp dir."""
    import psutil

    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(root_pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    return list(found.values())


def _stop_ray(process: subprocess.Popen[bytes], temp_dir: str) -> None:
    """Stop only this test's Ray processes (``ray stop`` would stop every Ray on the machine)."""
    import psutil

    procs = _ray_processes(process.pid, temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    # Some of Ray's helpers linger after SIGTERM; the test's temp dir goes anyway, so 5 s is enough.
    _, alive = psutil.wait_procs(procs, timeout=5)  # type: ignore[arg-type]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    process.wait(timeout=10)


def _start_ray(log_file: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``ray start --head --block`` on 127.0.0.1 with every port chosen free; returns the process,
    its temp dir and the dashboard URL once the node is up and the Jobs API answers."""
    temp_dir = f"/tmp/rayftm{secrets.token_hex(3)}"  # short: Ray's socket paths have a limit
    dashboard_port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    command = [
        str(Path(sys.executable).parent / "ray"),
        *["start", "--head", "--block", "--disable-usage-stats"],
        *["--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"],
        *["--include-dashboard", "true", "--num-cpus", "4", "--temp-dir", temp_dir],
        *[str(part) for item in ports.items() for part in item],
    ]
    # Jobs run `python -m ftmagic.runners.ray_entry`: this environment's python must come first.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["RAY_JOB_STOP_WAIT_TIME_S"] = "20"
    with log_file.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{dashboard_port}"

    def up() -> bool:
        started = "Ray runtime started" in log_file.read_text(errors="replace")
        return process.poll() is not None or (started and _jobs_api_up(url))

    try:
        wait_until(up, RAY_READY_S, "Ray")
    except AssertionError:
        _stop_ray(process, temp_dir)
        raise
    return process, temp_dir, url


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with its dashboard (the Jobs API); yields the dashboard URL.

    Ray gives its raylet a fixed 30 s to register, which a busy machine can miss: one retry.
    """
    folder = tmp_path_factory.mktemp("ray")
    for attempt in (1, 2):
        process, temp_dir, url = _start_ray(folder / f"ray-start-{attempt}.log")
        if process.poll() is None:
            break
        _stop_ray(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert process.poll() is None, (folder / f"ray-start-{attempt}.log").read_text()
    try:
        yield url
    finally:
        _stop_ray(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _jobs_api_up(url: str) -> bool:
    from ray.job_submission import JobSubmissionClient

    try:
        JobSubmissionClient(url).list_jobs()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A real ``ftmagic server`` as the tracking URI of every run in this module."""
    root = tmp_path_factory.mktemp("ray-runs")
    with ftmagic_server(root / "store") as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", url)
        mp.chdir(root)
        yield {"url": url, "data": write_data(root)}


def test_run_under_ray_train_completes(ray_head: str, server_env: dict[str, object]) -> None:
    data = Path(str(server_env["data"]))
    config = tiny_config(data, backend="ray", ray_address=ray_head, num_processes=2)
    run = ftmagic.create(config).wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "COMPLETED", run.status_reason
    assert metric_steps(run.run_id) == [1, 2, 3, 4]  # two workers, one writer
    assert [c.step for c in run.checkpoints] == [2, 4]
    tags = tags_of(run.run_id)
    job_id = tags[ray_runner.JOB_TAG]
    assert job_id == f"ftmagic-{run.run_id}-1"
    assert tags[ray_runner.ADDRESS_TAG] == ray_head
    wait_until(lambda: ray_runner.job_status(run) == "SUCCEEDED", 60, "the job to succeed")


def test_cancel_stops_the_run_and_its_job(ray_head: str, server_env: dict[str, object]) -> None:
    data = Path(str(server_env["data"]))
    config = tiny_config(data, backend="ray", ray_address=ray_head, training_duration="400ba")
    run = ftmagic.create(config.replace(checkpoint_interval="1000ba"))
    wait_until(lambda: metric_steps(run.run_id), RUN_TIMEOUT_S, "the first step")
    ftmagic.cancel(run)
    run.wait(timeout=RUN_TIMEOUT_S)
    assert run.status == "STOPPED"
    steps = metric_steps(run.run_id)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 400
    assert [c.step for c in run.checkpoints] == [steps[-1]]
    final = wait_until(lambda: _ended(ray_runner.job_status(run)), 90, "the job to end")
    assert final in ("SUCCEEDED", "STOPPED")


def _ended(job_status: str | None) -> str | None:
    return job_status if job_status in ("SUCCEEDED", "STOPPED", "FAILED") else None


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(RunError, match=r"pip install ftmagic\[ray\]"):
        ray_runner.job_client("http://127.0.0.1:8265")


def test_address_comes_from_config_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tmp_path / "d.jsonl", backend="ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_runner.address_of(config) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert ray_runner.address_of(config) == "http://10.0.0.5:8265"
    assert ray_runner.address_of(config.replace(ray_address="http://h:1")) == "http://h:1"
    env = ray_runner.runtime_env(config, "b" * 32, resume=True, uri="http://127.0.0.1:5000")
    env_vars = env["env_vars"]
    assert ftmagic.RunConfig.from_yaml(env_vars[ray_runner.CONFIG_ENV]) == config
    assert env_vars[ray_runner.RUN_ID_ENV] == "b" * 32 and env_vars[ray_runner.RESUME_ENV] == "1"
    assert env_vars["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_entry_reads_the_job_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftmagic.runners import ray_entry

    monkeypatch.delenv(ray_runner.CONFIG_ENV, raising=False)
    monkeypatch.delenv(ray_runner.RUN_ID_ENV, raising=False)
    with pytest.raises(SystemExit, match="FTMAGIC_CONFIG_YAML, FTMAGIC_RUN_ID not set"):
        ray_entry.job_arguments()
    config = tiny_config(tmp_path / "d.jsonl", backend="ray", num_processes=2)
    env = ray_runner.runtime_env(config, "c" * 32, resume=False, uri="http://127.0.0.1:5000")
    for name, value in env["env_vars"].items():
        monkeypatch.setenv(name, value)
    assert ray_entry.job_arguments() == (config, "c" * 32, False)
