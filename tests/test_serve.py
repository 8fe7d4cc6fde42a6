"""Serving in one call: ``run.serve()`` starts ``mlflow models serve`` on 127.0.0.1, answers a
chat, and ``stop()`` leaves no process of its group behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_tracking import make_config
from fixtures_ui import TestingShell, ipshell  # noqa: F401 (fixture)
from ftmagic.errors import RunError
from ftmagic.tracking import store
from ftmagic.tracking.run import get_run

MESSAGES = [{"role": "user", "content": "Who are you?"}]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    from ftmagic.models.loading import load_model, load_tokenizer

    out = tmp_path / "model"
    load_model("ftmagic/tiny-random-chat").save_pretrained(out)
    load_tokenizer("ftmagic/tiny-random-chat").save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_serve_round_trip_leaves_no_process(
    mlflow_store: str,
    tiny_model_dir: Path,
    ipshell: TestingShell,  # noqa: F811
) -> None:
    """``%ft serve RUN`` (which calls ``run.serve()``): chat, then the Stop button."""
    from ftmagic.models.generation import generate

    config = make_config(register_to="main.default.served", experiment_path="serve")
    run_id = store.create_run(config, backend="inkernel")
    store.register_model(run_id, tiny_model_dir, "main.default.served", "served")
    expected = generate(str(tiny_model_dir), None, MESSAGES, max_new_tokens=8)

    box = ipshell.run_cell(f"%ft serve {run_id}").result
    with box.endpoint as endpoint:
        assert endpoint.url.startswith("http://127.0.0.1:")
        assert endpoint.model_uri == "models:/main.default.served/1"
        assert endpoint.url in box.children[0].value
        pgid = endpoint.pid
        assert len(group_members(pgid)) >= 3  # the guard, mlflow and its server
        answer = endpoint.chat(MESSAGES, max_new_tokens=8)
        assert "127.0.0.1" in endpoint.logs()  # the server logs where it listens
        box.stop_button.click()
        assert not endpoint.running and box.stop_button.disabled
        assert "stopped" in box.children[0].value
    assert answer.strip() == expected.strip() and expected.strip()
    assert group_members(pgid) == []
    endpoint.stop()  # a second stop is harmless


def test_run_without_registered_model_says_how_to_get_one(
    mlflow_store: str,
    ipshell: TestingShell,  # noqa: F811
) -> None:
    run_id = store.create_run(make_config(experiment_path="serve"), backend="inkernel")
    with pytest.raises(RunError, match=r"no registered model to serve.*promote"):
        get_run(run_id).serve()
    shown = ipshell.run_cell(f"%ft serve {run_id}")
    assert shown.result is None and "no registered model to serve" in shown.html + shown.text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_server_that_cannot_start_reports_its_log(mlflow_store: str) -> None:
    import ftmagic

    with pytest.raises(RunError, match="exited with code") as err:
        ftmagic.serve("models:/main.default.missing/1", timeout=600)
    assert "main.default.missing" in str(err.value)


def wait_for(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def sleeper_started(pgid: int) -> bool:
    return len(group_members(pgid)) >= 2  # the guard and the sleep it started


@pytest.mark.timeout(120)
def test_the_server_group_ends_when_the_interpreter_exits() -> None:
    code = (
        f"import sys, time\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_serve import sleeper_started\nfrom ftmagic.tracking.serving import Background\n"
        "bg = Background(['sleep', '600'])\nprint(bg.pid, flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline and not sleeper_started(bg.pid):\n"
        "    time.sleep(0.1)\n"
    )  # exits normally once the sleep runs: atexit must end the group
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    pgid = int(done.stdout.split()[0])
    assert wait_for(lambda: group_members(pgid) == [], timeout=10), group_members(pgid)


@pytest.mark.timeout(120)
def test_the_server_group_ends_when_the_interpreter_is_killed() -> None:
    code = (
        "import time\nfrom ftmagic.tracking.serving import Background\n"
        "bg = Background(['sleep', '600'])\nprint(bg.pid, flush=True)\ntime.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert wait_for(lambda: sleeper_started(pgid)), group_members(pgid)
        parent.send_signal(signal.SIGKILL)  # no atexit: the guard must notice
        parent.wait(timeout=10)
        assert wait_for(lambda: group_members(pgid) == [], timeout=15), group_members(pgid)
    finally:
        parent.kill()
