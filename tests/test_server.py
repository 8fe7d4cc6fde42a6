"""``ftmagic server``: a real mlflow server on 127.0.0.1 that runs can log to, and that stops
cleanly; non-loopback hosts need --allow-remote."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_runners import free_port, is_healthy, stop_process, wait_until
from ftmagic.errors import FtmagicError
from ftmagic.runners import server

SERVER = [sys.executable, "-m", "ftmagic.cli", "server"]  # `ftmagic server`


def test_loopback_hosts_are_recognised() -> None:
    assert all(server.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(server.is_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "::", "example.com"))


def test_remote_host_needs_allow_remote_and_then_warns() -> None:
    with pytest.raises(FtmagicError, match="--allow-remote"):
        server.check_host("0.0.0.0", 5000, allow_remote=False)
    warning = server.check_host("0.0.0.0", 5000, allow_remote=True)
    assert warning is not None and "no authentication" in warning and "0.0.0.0:5000" in warning
    assert server.check_host("127.0.0.1", 5000, allow_remote=False) is None


def test_server_command_uses_sqlite_and_served_artifacts(tmp_path: Path) -> None:
    command = server.server_command("127.0.0.1", 5123, tmp_path)
    joined = " ".join(command)
    assert f"--backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in joined
    assert f"--artifacts-destination {tmp_path / 'mlartifacts'}" in joined
    assert "--serve-artifacts" in command and "--host 127.0.0.1 --port 5123" in joined


def test_cli_refuses_a_public_host_without_starting(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVER, "--host", "0.0.0.0", "--store", "s"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr and "127.0.0.1" in done.stderr
    assert not (tmp_path / "s").exists()  # refused before touching the store


def test_server_answers_health_takes_a_run_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    output = tmp_path / "server.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*SERVER, "--store", str(tmp_path / "store"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: is_healthy(url) or process.poll() is not None, 90, "the server")
        assert process.poll() is None
        wait_until(lambda: "export MLFLOW" in output.read_text(), 10, "the banner")
        assert f"ftmagic server: MLflow at {url}" in output.read_text()
        assert f"export MLFLOW_TRACKING_URI={url}\n" in output.read_text()

        from ftmagic.tracking import store

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        client = store.client(url)
        exp = client.create_experiment("server-test")
        run_id = client.create_run(exp).info.run_id
        client.log_metric(run_id, "train/loss", 1.5, step=3)
        client.log_text(run_id, "hello", "notes/hello.txt")
        assert client.get_metric_history(run_id, "train/loss")[0].value == 1.5
        assert (tmp_path / "store" / "mlflow.db").exists()
        served = list((tmp_path / "store" / "mlartifacts").rglob("hello.txt"))
        assert [p.read_text() for p in served] == ["hello"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not is_healthy(url)  # the mlflow workers went with it
    finally:
        stop_process(process)


def test_second_server_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with pytest.raises(FtmagicError, match="already answers"):
        _serve_against_fake_health(tmp_path, "127.0.0.1", allow_remote=False, said=[])


def test_allow_remote_warns_before_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    said: list[str] = []
    with pytest.raises(FtmagicError, match="already answers"):
        _serve_against_fake_health(tmp_path, "0.0.0.0", allow_remote=True, said=said)
    assert len(said) == 1 and "no authentication" in said[0]
    assert any("no authentication" in r.getMessage() for r in caplog.records)


def _serve_against_fake_health(
    tmp_path: Path, host: str, *, allow_remote: bool, said: list[str]
) -> None:
    """A tiny HTTP server that answers /health like MLflow, so ``serve`` must refuse the port."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(httpd.server_address[1])
        server.serve(host, port, tmp_path, allow_remote=allow_remote, announce=said.append)
    finally:
        httpd.shutdown()
