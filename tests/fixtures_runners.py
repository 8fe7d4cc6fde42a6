"""Helpers for the runner tests: free ports, a real ``ftmagic server`` process, tiny NER data and a
fast config on the built-in tiny model, and bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from ftmagic.config import RunConfig
from polling import wait_until

NER = Path(str(resources.files("ftmagic.resources") / "ner"))
SERVER_READY_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_healthy(url: str) -> bool:
    from ftmagic.runners.server import is_healthy as check

    return check(url)


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@contextlib.contextmanager
def ftmagic_server(store: Path, *extra: str) -> Iterator[str]:
    """A real ``ftmagic server`` (mlflow server) on 127.0.0.1 for ``store``; yields its URL."""
    port = free_port()
    store.mkdir(parents=True, exist_ok=True)
    output = store / "server.out"
    command = [sys.executable, "-m", "ftmagic.runners.server", "--store", str(store)]
    with output.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: is_healthy(url) or process.poll() is not None, SERVER_READY_S, "the server"
        )
        assert process.poll() is None, output.read_text()
        yield url
    finally:
        stop_process(process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def write_data(folder: Path, count: int = 60) -> Path:
    """The first ``count`` bundled NER chats as a JSONL file in ``folder``."""
    lines = (NER / "train.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(data: Path, **changes: Any) -> RunConfig:
    """A run on ``ftmagic/tiny-random-chat`` whose steps take a fraction of a second on 2 CPUs."""
    base: dict[str, Any] = {
        "model": "ftmagic/tiny-random-chat",
        "train_data_path": str(data),
        "training_duration": "4ba",
        "checkpoint_interval": "2ba",
        "tokens_per_batch": 256,
        "micro_batch_tokens": 256,
        "learning_rate": 2e-3,
        "warmup_steps": 1,
        "validate_inputs": False,
        "experiment_path": "runner-tests",
    }
    base.update(changes)
    return RunConfig.from_dict(base)


def metric_steps(run_id: str, name: str = "train/loss", uri: str | None = None) -> list[int]:
    """Every step at which ``name`` was logged, duplicates included, in logged order."""
    from ftmagic.tracking import store

    history = store.client(uri).get_metric_history(run_id, name)
    return sorted(m.step for m in history)


def tags_of(run_id: str, uri: str | None = None) -> dict[str, str]:
    from ftmagic.tracking import store

    return dict(store.client(uri).get_run(run_id).data.tags)


def kill_started_runs(uri: str | None = None) -> int:
    """SIGKILL the process group of every detached run in the store that is still alive (tests
    must never leave trainers behind, pass or fail); returns how many were killed."""
    from ftmagic.runners import _process
    from ftmagic.tracking import store

    client = store.client(uri)
    killed = 0
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=500):
            pid = run.data.tags.get(_process.PID_TAG)
            if pid and _process.is_supervisor_of(int(pid), run.info.run_id):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)
                    killed += 1
    return killed


@contextlib.contextmanager
def reaping(uri: str | None = None) -> Iterator[None]:
    try:
        yield
    finally:
        kill_started_runs(uri)
