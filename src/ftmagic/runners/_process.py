"""Detached training processes for the ``local`` and ``torchrun`` backends.

A run started from a notebook must outlive the kernel, so the kernel starts a small *supervisor*
in a new session (``python -m ftmagic.runners._process``), and the supervisor starts the trainer
(``ftmagic train`` or ``torchrun ... ftmagic train``) and waits for it. The supervisor:

- sends the trainer's output to ``train.log`` in the run's folder, and logs that file as the
  artifact ``logs/train.log`` when the trainer ends;
- marks the run FAILED at once (with the exit code or signal) when the trainer dies before
  recording an end, instead of leaving the run to be found dead by its missing heartbeat;
- forwards SIGTERM to the trainer, which then stops after its step with a checkpoint; once the
  trainer has ended, SIGTERM ends the supervisor itself at once, even while it is still retrying
  to record the end on an unreachable tracking server.

The supervisor's pid and host are run tags, so ``cancel`` can fall back to SIGTERM when the
trainer does not honour the MLflow cancel flag (for instance when it cannot reach the server).
When the whole process group is killed, nothing is left to record the end: the heartbeat stops
and the run reads FAILED ("heartbeat lost"); ``ftmagic.resume`` continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from ftmagic.config import RunConfig

log = logging.getLogger(__name__)

PID_TAG = "ftmagic.pid"
HOST_TAG = "ftmagic.host"
LOG_TAG = "ftmagic.log_file"
LOG_ARTIFACT_DIR = "logs"
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
RUNS_DIR = "ftmagic-runs"
CANCEL_GRACE_ENV = "FTMAGIC_CANCEL_GRACE_S"
DEFAULT_CANCEL_GRACE_S = 120.0
SUPERVISOR_MODULE = "ftmagic.runners._process"


# --- where things go ---------------------------------------------------------------------------


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute, so a child in any folder finds it."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix) :].partition("?")
    if not path or path == ":memory:" or Path(path).is_absolute():
        return uri
    return f"{prefix}{(Path.cwd() / path).resolve()}{sep}{query}"


def run_folder(run_id: str, uri: str) -> Path:
    """The run's local folder (config and log): ``ftmagic-runs/<run_id>`` next to a SQLite
    store, else under the ftmagic cache."""
    from ftmagic.tracking.client import cache_dir, check_run_id

    uri = absolute_uri(uri)
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        base = Path(uri[len("sqlite:///") :].partition("?")[0]).parent / RUNS_DIR
    else:
        base = cache_dir() / "runs"
    folder = base / check_run_id(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_config(config: RunConfig, folder: Path) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(config.to_yaml(), encoding="utf-8")
    return path


def train_arguments(config_path: Path, run_id: str, *, resume: bool) -> list[str]:
    """``-m ftmagic.cli train CONFIG --run-id ID [--resume]`` (after ``python`` or torchrun)."""
    args = ["-m", "ftmagic.cli", "train", str(config_path), "--run-id", run_id]
    return [*args, "--resume"] if resume else args


def child_environment(uri: str) -> dict[str, str]:
    """This process's environment with the tracking URI the trainer must log to."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = absolute_uri(uri)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- starting (in the kernel) ------------------------------------------------------------------


def start_detached(command: Sequence[str], run_id: str, *, uri: str | None = None) -> int:
    """Start the supervisor of ``command`` in a new session and record its pid; returns it.

    The new session keeps the training alive when the kernel (or its terminal) dies.
    """
    from ftmagic.tracking.client import tracking_uri

    uri = absolute_uri(uri or tracking_uri())
    folder = run_folder(run_id, uri)
    log_path = folder / LOG_FILE
    supervisor = [
        sys.executable,
        "-m",
        SUPERVISOR_MODULE,
        "--run-id",
        run_id,
        "--log",
        str(log_path),
        "--",
        *command,
    ]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            supervisor,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_environment(uri),
            cwd=os.getcwd(),
            start_new_session=True,
        )
    record_process(run_id, process.pid, log_path, uri=uri)
    log.info("run %s: supervisor pid %d, log %s", run_id, process.pid, log_path)
    return process.pid


def record_process(run_id: str, pid: int, log_path: Path, *, uri: str | None = None) -> None:
    from ftmagic.tracking.client import set_tags

    tags = {PID_TAG: pid, HOST_TAG: socket.gethostname(), LOG_TAG: log_path}
    set_tags(run_id, tags, uri=uri)


# --- cancelling ----------------------------------------------------------------------------------


def cancel_grace_s() -> float:
    """Seconds a run gets to honour the cancel flag before the backend stops it harder."""
    try:
        return float(os.environ.get(CANCEL_GRACE_ENV, DEFAULT_CANCEL_GRACE_S))
    except ValueError:
        return DEFAULT_CANCEL_GRACE_S


def wait_for_end(run_id: str, timeout: float, *, uri: str | None = None, poll: float = 1.0) -> bool:
    """Wait until the run records an end (COMPLETED, FAILED, STOPPED); False on timeout."""
    from ftmagic.tracking import state

    deadline = time.monotonic() + timeout
    while True:
        try:
            if state.read_status(run_id, uri=uri) in state.TERMINAL:
                return True
        except Exception as err:  # the server may be briefly unreachable: keep waiting
            log.info("run %s: status not readable yet (%s)", run_id, err)
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def cancel_with_fallback(
    run_id: str,
    after: Callable[[bool], None],
    *,
    grace_s: float | None = None,
    wait: bool = False,
    uri: str | None = None,
) -> None:
    """Set the MLflow cancel flag, wait (at most ``grace_s``) for the run to record its end, then
    call ``after(ended)``: the backend's harder stop when ``ended`` is False.

    With ``wait`` the caller blocks until then; otherwise a daemon thread watches, so a notebook
    stays responsive while a big model writes its last checkpoint.
    """
    from ftmagic.tracking import state

    state.request_cancel(run_id, uri=uri)
    grace = cancel_grace_s() if grace_s is None else grace_s

    def watch() -> None:
        ended = wait_for_end(run_id, grace, uri=uri)
        if not ended:
            log.warning(
                "run %s did not stop within %.0f s of the cancel; stopping it", run_id, grace
            )
        after(ended)

    if wait:
        watch()
    else:
        threading.Thread(target=watch, name=f"ftmagic-cancel-{run_id[:8]}", daemon=True).start()


def terminate_unless_ended(run_id: str) -> Callable[[bool], None]:
    """The local and torchrun fallback: SIGTERM the supervisor when the run has not ended."""

    def after(ended: bool) -> None:
        if not ended:
            terminate(run_id)

    return after


def terminate(run_id: str, *, uri: str | None = None) -> bool:
    """SIGTERM the run's supervisor (which forwards it to the trainer) when it runs on this
    host and is still ours; True when a signal was sent."""
    from ftmagic.tracking.client import run_tags

    tags = run_tags(run_id, uri=uri)
    pid_text, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if not pid_text or host != socket.gethostname():
        log.warning("run %s: no supervisor on this host to signal (host %s)", run_id, host)
        return False
    pid = int(pid_text)
    if not is_supervisor_of(pid, run_id):
        return False
    os.kill(pid, signal.SIGTERM)
    return True


def is_supervisor_of(pid: int, run_id: str) -> bool:
    """Whether ``pid`` is alive and is the supervisor of ``run_id`` (pids get reused)."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return SUPERVISOR_MODULE in cmdline and run_id in cmdline


# --- the supervisor (its own process) ----------------------------------------------------------


def supervise(command: Sequence[str], run_id: str, log_path: Path) -> int:
    """Run the trainer ``command``, forward SIGTERM/SIGINT to it, record how it ended."""
    from ftmagic.tracking.client import client

    client()  # made now (mlflow imports slowly), so the end is recorded promptly
    started = datetime.now(timezone.utc)
    with open(log_path, "ab") as out:
        child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    signal.signal(signal.SIGTERM, forwarder(child))
    signal.signal(signal.SIGINT, forwarder(child))
    code = child.wait()
    record_exit(run_id, code, log_path, started=started)
    return 0 if code == 0 else 1


def forwarder(child: subprocess.Popen[bytes]) -> Callable[[int, FrameType | None], None]:
    """A signal handler that passes the signal to ``child`` while it runs, and once it has ended
    lets the signal end this process: recording the end may wait minutes on a tracking server
    that is down, and a stop request must not wait for that."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
            return
        log.warning("trainer already ended; stopping on signal %d", signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handle


def record_exit(run_id: str, code: int, log_path: Path, *, started: datetime) -> None:
    """Log the trainer's output and, when it died without recording an end, mark it FAILED.

    A run resumed elsewhere since ``started`` (a later PENDING event) belongs to that attempt
    and is left alone.
    """
    from ftmagic.tracking import state
    from ftmagic.tracking.client import client, run_tags

    try:
        tags = run_tags(run_id)
        events = state.parse_events(tags)
        resumed = any(e.type == state.RunStatus.PENDING and e.time > started for e in events)
        if state.recorded_status(tags) not in state.TERMINAL and not resumed:
            reason = f"{exit_description(code)} before the run ended"
            state.set_status(run_id, state.RunStatus.FAILED, reason)
    except Exception:
        log.exception("run %s: could not record the trainer's exit", run_id)
    try:
        client().log_artifact(run_id, str(log_path), LOG_ARTIFACT_DIR)
    except Exception:
        log.exception("run %s: could not log %s", run_id, log_path)


def exit_description(code: int) -> str:
    """``the trainer exited with code 3`` or ``the trainer was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the trainer was killed by {name}"
    return f"the trainer exited with code {code}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftmagic.runners._process", description="supervise a detached ftmagic run"
    )
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise (put it after --)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(message)s")
    return supervise(command, args.run_id, args.log)


if __name__ == "__main__":
    sys.exit(main())
