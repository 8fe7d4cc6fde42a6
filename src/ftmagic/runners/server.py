"""``ftmagic server``: an MLflow tracking server for runs that train outside the kernel.

It is ``mlflow server`` with a SQLite database and a served artifact folder in one store folder,
bound to 127.0.0.1 unless told otherwise. Every process of a run (a local process, torchrun's
ranks, Ray workers) and every view (notebook, sidebar, CLI) then meets at one URI. The default
store folder is the folder of the embedded SQLite store (``mlflow.db`` and ``mlartifacts/``), so
the server shows the runs a notebook already made there.

MLflow's server has no authentication by default: binding anything but a loopback address needs
``--allow-remote``, and then a warning says how to protect it (see docs/remote.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ftmagic.errors import FtmagicError

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # the embedded store's artifact folder (tracking.store)
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0

REMOTE_WARNING = (
    "ftmagic server: binding {host} exposes the MLflow server, which has no authentication by "
    "default: anyone who can reach {host}:{port} can read, change and delete runs and models. "
    "Prefer an SSH tunnel to 127.0.0.1, or put it behind an authenticating proxy "
    "(see docs/remote.md)."
)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, port: int, *, allow_remote: bool) -> str | None:
    """The warning to show for ``host``, or None; refuses a non-loopback host without
    ``allow_remote``."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise FtmagicError(
            f"ftmagic server: --host {host} would expose the MLflow server, which has no "
            "authentication, to the network. Fix: keep the default 127.0.0.1 (reach it through "
            "an SSH tunnel), or add --allow-remote if the network is trusted."
        )
    return REMOTE_WARNING.format(host=host, port=port)


def default_store() -> Path:
    """The folder of ``MLFLOW_TRACKING_URI`` when it is a SQLite file, else the current folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].partition("?")[0]
        if path and path != ":memory:":
            return (Path.cwd() / path).resolve().parent
    return Path.cwd()


def server_command(host: str, port: int, store: Path) -> list[str]:
    """The ``mlflow server`` command line for a store folder."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{store / DB_FILE}",
        "--artifacts-destination",
        str(store / ARTIFACTS_DIR),
        "--serve-artifacts",
        "--workers",
        "1",
    ]


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url``'s ``/health`` answers ``OK``."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"OK"
    except OSError:
        return False


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if is_healthy(url):
            return True
        time.sleep(0.5)
    return False


def serve(
    host: str = "127.0.0.1",
    port: int = 5000,
    store: str | Path | None = None,
    *,
    allow_remote: bool = False,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run an MLflow server for ``store`` until SIGINT/SIGTERM; returns the exit code.

    ``announce`` receives the lines meant for the person at the terminal (default: stdout).
    """
    say = announce or (lambda text: print(text, flush=True))
    warning = check_host(host, port, allow_remote=allow_remote)
    if warning:
        log.warning("%s", warning)
        say(warning)
    folder = Path(store).expanduser().resolve() if store else default_store()
    (folder / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
    url = url_for(host, port)
    if is_healthy(url, timeout=1.0):
        raise FtmagicError(
            f"ftmagic server: something already answers at {url}. Fix: use it "
            f"(export MLFLOW_TRACKING_URI={url}) or choose another --port"
        )
    process = subprocess.Popen(server_command(host, port, folder), start_new_session=True)
    stopping = _StopOnSignals(process)
    with stopping:
        if not wait_healthy(url, process, READY_TIMEOUT_S):
            stopping.stop()
            raise FtmagicError(
                f"ftmagic server: mlflow server did not become ready at {url} (exit code "
                f"{process.returncode}). Fix: check that port {port} is free and the store "
                f"folder {folder} is writable"
            )
        say(f"ftmagic server: MLflow at {url} (store {folder})")
        say(f"  export MLFLOW_TRACKING_URI={url}")
        code = stopping.wait()
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


class _StopOnSignals:
    """SIGINT/SIGTERM stop the server's whole process group (uvicorn runs workers).

    The handler only sends the signal: waiting inside a handler would deadlock with the
    ``Popen.wait`` it interrupted. ``wait`` escalates to SIGKILL after ``STOP_TIMEOUT_S``.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.signalled_at: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.stop()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def wait(self) -> int:
        """The server's exit code, killing it if it ignores SIGTERM for ``STOP_TIMEOUT_S``."""
        while True:
            try:
                return self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                late = self.signalled_at and time.monotonic() - self.signalled_at > STOP_TIMEOUT_S
                if late:
                    self._signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            self.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ftmagic.runners.server`` (the same as ``ftmagic server``)."""
    parser = argparse.ArgumentParser(prog="ftmagic server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--store", help="store folder (default: the SQLite store's folder)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the server has no authentication)",
    )
    args = parser.parse_args(argv)
    try:
        return serve(args.host, args.port, args.store, allow_remote=args.allow_remote)
    except FtmagicError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
