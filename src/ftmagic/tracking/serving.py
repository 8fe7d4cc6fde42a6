"""Serving in one call: ``mlflow models serve`` in the background on 127.0.0.1.

``serve(model_uri)`` (or ``run.serve()``) picks a free port, starts the server in a process group
of its own, waits until ``/ping`` answers and returns an ``Endpoint``. The endpoint stops its
whole process group on ``stop()``, at the end of a ``with`` block, and when the interpreter (the
kernel) exits.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from ftmagic.errors import RunError

HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 3000
GUARD_POLL_S = 0.5

Messages = list[dict[str, str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve(
    model_uri: str,
    *,
    port: int | None = None,
    tracking_uri: str | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Endpoint:
    """Serve ``model_uri`` (``models:/name/version``, ``models:/name@alias``, ``runs:/...``) with
    ``mlflow models serve`` on 127.0.0.1 and return its ``Endpoint`` once it answers."""
    from ftmagic.tracking.client import tracking_uri as default_uri

    endpoint = Endpoint(model_uri, port or free_port(), tracking_uri or default_uri())
    try:
        endpoint.wait_until_healthy(timeout)
    except BaseException:
        endpoint.stop()
        raise
    return endpoint


class Endpoint:
    """A model served over HTTP: ``url``, ``chat(messages)``, ``predict(inputs)``, ``logs()``,
    ``stop()``; a context manager that stops the server on exit."""

    def __init__(self, model_uri: str, port: int, tracking_uri: str) -> None:
        self.model_uri = model_uri
        self.port = port
        self.tracking_uri = tracking_uri
        self.url = f"http://{HOST}:{port}"
        self._tokenizer: Any = None
        bin_dir = Path(sys.executable).parent  # the server runs in this environment
        command = [
            str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri,
            "--host", HOST, "-p", str(port), "--env-manager", "local",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": tracking_uri,
        }
        self.server = Background(command, env=env)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The server's process group id."""
        return self.server.pid

    @property
    def running(self) -> bool:
        return self.server.running

    def wait_until_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RunError(
                    f"the server for {self.model_uri} exited with code {self.server.returncode}."
                    f" Its log ends:\n{self.logs()[-LOG_TAIL_CHARS:]}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.5)
        raise RunError(
            f"the server for {self.model_uri} did not answer within {timeout:g} s. "
            f"Fix: wait longer (timeout=) or read its log:\n{self.logs()[-LOG_TAIL_CHARS:]}"
        )

    def stop(self) -> None:
        """Stop the server and every process it started; safe to call twice."""
        self.server.stop()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def logs(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        return self.server.logs()

    # --- requests ------------------------------------------------------------------------------
    def predict(self, inputs: list[str], **params: Any) -> list[str]:
        """The raw ``/invocations`` call: prompts in, the server's predictions out."""
        if not self.running:
            raise RunError(f"the server for {self.model_uri} is stopped. Fix: serve it again")
        body = json.dumps({"inputs": inputs, "params": params}).encode()
        request = urllib.request.Request(
            f"{self.url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return list(json.loads(response.read())["predictions"])
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[:LOG_TAIL_CHARS]
            raise RunError(f"the server refused the request ({err.code}): {detail}") from None

    def chat(self, messages: Messages | str, **params: Any) -> str:
        """The model's answer to a conversation (or one user message), formatted with the
        model's chat template; ``params`` (e.g. ``max_new_tokens``) go to the server."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        tokenizer = self.tokenizer()
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = prompt.removeprefix(tokenizer.bos_token or "")  # the pipeline adds its own BOS
        text = self.predict([prompt], **params)[0]
        return str(text[len(prompt) :] if text.startswith(prompt) else text)

    def tokenizer(self) -> Any:
        """The served model's tokenizer (read once from the model's artifacts)."""
        if self._tokenizer is None:
            from ftmagic.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(str(_tokenizer_folder(self.model_uri, self)))
        return self._tokenizer

    # --- display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Endpoint(url={self.url!r}, model_uri={self.model_uri!r}, {state})"

    def _repr_html_(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<div><b>{html.escape(self.model_uri)}</b> served at "
            f"<code>{html.escape(self.url)}/invocations</code> ({state})</div>"
        )


class Background:
    """A command in a process group of its own, under a guard process that ends the group when
    this interpreter dies, even by SIGKILL. ``stop()`` ends the group, and so does a normal exit
    of the interpreter (``atexit``). Output goes to a log file (``logs()``)."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="ftmagic-serve-", suffix=".log")[1])
        guarded = [
            sys.executable,
            "-m",
            "ftmagic.tracking.serving",
            "--guard",
            str(os.getpid()),
            "--",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*guarded, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._stopped = False
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The guard's process id, which is also the process group id."""
        return int(self.process.pid)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """End the whole process group; safe to call twice."""
        atexit.unregister(self.stop)
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        leftover = group_processes(self.pid)  # workers that outlived their parent
        if leftover:
            import psutil

            _signal_group(self.pid, signal.SIGKILL)
            psutil.wait_procs(leftover, timeout=STOP_TIMEOUT_S)


def guard(parent: int, command: list[str]) -> int:
    """Run ``command`` and return its exit code. A TERM sent to the group is left to the command
    (this guard waits for it to exit); when ``parent`` is gone (this guard is re-parented) the
    guard ends the group itself: TERM, then KILL after ``STOP_TIMEOUT_S``."""
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)  # set after the exec: not inherited
    deadline: float | None = None
    while child.poll() is None:
        if deadline is None and os.getppid() != parent:
            _signal_group(os.getpgrp(), signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        if deadline is not None and time.monotonic() > deadline:
            _signal_group(os.getpgrp(), signal.SIGKILL)
        time.sleep(GUARD_POLL_S)
    return int(child.returncode)


def group_processes(pgid: int) -> list[Any]:
    """The live (not zombie) processes of process group ``pgid``, as ``psutil.Process``."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def _tokenizer_folder(model_uri: str, endpoint: Endpoint) -> Path:
    from ftmagic.tracking.registry import download_registered_model

    if model_uri.startswith("models:/"):
        return download_registered_model(model_uri, uri=endpoint.tracking_uri)
    from mlflow.artifacts import download_artifacts

    source = f"{model_uri.rstrip('/')}/components/tokenizer"
    return Path(download_artifacts(artifact_uri=source, tracking_uri=endpoint.tracking_uri))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


if __name__ == "__main__":  # python -m ftmagic.tracking.serving --guard PARENT_PID -- COMMAND...
    if len(sys.argv) < 5 or sys.argv[1] != "--guard" or sys.argv[3] != "--":
        sys.exit("usage: python -m ftmagic.tracking.serving --guard PARENT_PID -- COMMAND...")
    sys.exit(guard(int(sys.argv[2]), sys.argv[4:]))
