"""Helpers for the JupyterLab browser test: a real ``jupyter lab`` server and Debian's Chromium
driven by Playwright, with every wait bounded."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polling import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "build" / "lab-ui"


def require_chromium() -> Path:
    """Chromium's path; in CI a missing browser fails the test, locally it skips it."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Lab:
    """A running ``jupyter lab``: where it listens, its token and its log."""

    url: str
    token: str
    root: Path
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its kernels
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _kill_kernels(runtime_dir: Path) -> None:
    """Kill kernels still running from this server's runtime folder (they run in their own
    sessions, so stopping the server's process group does not reach them)."""
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(runtime_dir) in cmdline and "kernel" in cmdline:
                os.kill(int(proc_dir.name), signal.SIGKILL)


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict[str, str], *extra: str) -> Iterator[Lab]:
    """``jupyter lab`` on 127.0.0.1 with a random token, isolated settings and workspaces."""
    port, token = free_port(), secrets.token_hex(16)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyter-lab.log"
    state = root / ".lab-state"
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--notebook-dir={root}",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
        *(["--allow-root"] if os.geteuid() == 0 else []),
        *extra,
    ]
    env = {**env, "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    quiet = state / "settings" / "@jupyterlab" / "apputils-extension"
    quiet.mkdir(parents=True, exist_ok=True)  # no news or update toasts over the screenshots
    (quiet / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log)
    try:
        wait_until(lambda: _answers(lab, proc), 90, "jupyter lab to answer")
        yield lab
    finally:
        _stop(proc)
        _kill_kernels(state / "runtime")


def _answers(lab: Lab, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n{lab.log_tail()}")
    url = f"{lab.url}/api/status?token={lab.token}"
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(url, timeout=3) as response,
    ):
        return bool(response.status == 200)
    return False


# --- page helpers (Playwright sync API) ---------------------------------------------------------

JS_CELL_SOURCES = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const model = panel && panel.content && panel.content.model;
  return model ? model.sharedModel.cells.map(c => c.getSource()) : null;
}"""

JS_KERNEL_IDLE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const session = panel && panel.sessionContext && panel.sessionContext.session;
  return !!(session && session.kernel && session.kernel.status === 'idle');
}"""

# Record every status each run shows in the sidebar, so a short RUNNING phase is not missed
# between two test polls.
JS_WATCH_STATUSES = """() => {
  window.ftmagicSeen = {};
  const record = () => {
    for (const item of document.querySelectorAll('li.jp-ftmagic-run')) {
      const seen = (window.ftmagicSeen[item.dataset.runId] ||= []);
      if (seen[seen.length - 1] !== item.dataset.status) { seen.push(item.dataset.status); }
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']
  });
  record();
}"""


def cell_sources(page: Any) -> list[str]:
    sources = page.evaluate(JS_CELL_SOURCES)
    assert sources is not None, "no notebook is the current widget"
    return list(sources)


def wait_kernel_idle(page: Any, timeout: float = 120) -> None:
    page.wait_for_function(JS_KERNEL_IDLE, timeout=timeout * 1000)


def run_command(page: Any, command: str, args: dict[str, Any] | None = None) -> Any:
    """Run a JupyterLab command (the palette's way), e.g. for steps the test is not about."""
    return page.evaluate(
        "([id, args]) => window.jupyterapp.commands.execute(id, args).then(() => true)",
        [command, args or {}],
    )


def sidebar_runs(page: Any) -> dict[str, dict[str, str]]:
    """What the runs sidebar shows now: run id -> status, name, progress, sparkline path."""
    return dict(
        page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('li.jp-ftmagic-run')].map(
          li => [li.dataset.runId, {
            status: li.dataset.status,
            name: li.querySelector('.jp-ftmagic-run-name').textContent,
            model: li.querySelector('.jp-ftmagic-run-model').textContent,
            start: li.querySelector('.jp-ftmagic-run-start').textContent,
            progress: li.querySelector('.jp-ftmagic-run-progress').textContent,
            spark: (li.querySelector('.jp-ftmagic-sparkline path') || {getAttribute: () => ''})
              .getAttribute('d'),
            mlflow: (li.querySelector('a.jp-ftmagic-mlflow') || {href: ''}).href,
            cancel: !!li.querySelector('button.jp-ftmagic-cancel')
          }]))"""
        )
    )


def statuses_seen(page: Any) -> dict[str, list[str]]:
    return dict(page.evaluate("() => window.ftmagicSeen || {}"))


class Clock:
    """Seconds each phase of a long test took (printed, to see where the time goes)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        parts = [f"{name} {seconds:.1f}s" for name, seconds in self.phases]
        return f"total {time.monotonic() - self.start:.1f}s: " + ", ".join(parts)
