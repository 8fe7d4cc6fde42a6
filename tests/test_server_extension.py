"""The Jupyter server extension's REST API, on a real Jupyter server and a real SQLite store.

Runs are created with ``ftmagic.tracking.store`` in a temp store; requests go through Jupyter's
real auth (token or login cookie) and XSRF checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from ftmagic.config import RunConfig
from ftmagic.server_extension import FtmagicExtension, downsample
from ftmagic.tracking import store

pytest_plugins = ["pytest_jupyter.jupyter_server"]

API = ("ftmagic", "api")
UNKNOWN_ID = "0" * 32


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty SQLite store (MLflow's schema setup takes seconds: done once)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    store.client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store that the server (same process) reads through MLFLOW_TRACKING_URI."""
    (tmp_path / "store").mkdir()
    shutil.copy(empty_store, tmp_path / "store" / "mlflow.db")
    value = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    monkeypatch.delenv("FTMAGIC_MLFLOW_UI", raising=False)
    return value


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"ftmagic": True}}}


def make_run(uri: str, *, status: str = "PENDING", losses: list[float] | None = None) -> str:
    from mlflow.entities import Metric

    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path="train.jsonl")
    run_id = store.create_run(config, backend="inkernel", uri=uri)
    if losses:
        now = int(time.time() * 1000)
        metrics = [Metric("train/loss", v, now, step) for step, v in enumerate(losses, 1)]
        store.client(uri).log_batch(run_id, metrics=metrics)
        store.set_tag(run_id, store.TOTAL_STEPS_TAG, len(losses), uri=uri)
    if status != "PENDING":
        store.set_status(run_id, "RUNNING", uri=uri)
        store.heartbeat(run_id, uri=uri)
    if status not in ("PENDING", "RUNNING"):
        store.set_status(run_id, status, uri=uri)
    return run_id


async def get_json(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    response = await jp_fetch(*API, *parts, **kwargs)
    assert response.code == 200
    return json.loads(response.body)


async def error_of(jp_fetch: Any, *parts: str, **kwargs: Any) -> tornado.httpclient.HTTPError:
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    return info.value


# --- listing and reading -----------------------------------------------------------------------


async def test_list_runs_newest_first_with_progress_and_loss(jp_fetch: Any, uri: str) -> None:
    losses = [4.0 - i * 0.01 for i in range(200)]
    done = make_run(uri, status="COMPLETED", losses=losses)
    pending = make_run(uri)

    data = await get_json(jp_fetch, "runs")

    assert data["tracking_uri"] == uri
    assert data["mlflow_ui_url"] is None
    assert [r["id"] for r in data["runs"]] == [pending, done]
    first, second = data["runs"]
    assert first["status"] == "PENDING"
    assert first["loss"] == []
    assert first["progress"]["step"] == 0
    assert second["status"] == "COMPLETED"
    assert second["model"] == "ftmagic/tiny-random-chat"
    assert second["name"].startswith("tiny-random-chat-train-")
    assert second["progress"]["step"] == 200
    assert second["progress"]["total_steps"] == 200
    assert second["created"] == pytest.approx(time.time(), abs=120)
    loss = second["loss"]
    assert len(loss) == 80
    assert loss[0] == [1, pytest.approx(4.0)]
    assert loss[-1] == [200, pytest.approx(4.0 - 199 * 0.01)]
    assert [p[0] for p in loss] == sorted(p[0] for p in loss)


async def test_empty_store_lists_nothing(jp_fetch: Any, uri: str) -> None:
    data = await get_json(jp_fetch, "runs")
    assert data["runs"] == []
    assert data["tracking_uri"] == uri


async def test_get_one_run_with_events(jp_fetch: Any, uri: str) -> None:
    run_id = make_run(uri, status="RUNNING", losses=[3.0, 2.5])
    data = await get_json(jp_fetch, "runs", run_id)
    assert data["id"] == run_id
    assert data["status"] == "RUNNING"
    assert data["loss"] == [[1, 3.0], [2, 2.5]]
    assert [e["type"] for e in data["events"]] == ["CREATED", "RUNNING"]


@pytest.mark.timeout(180)
async def test_a_run_with_unreadable_tags_is_listed_with_its_error(jp_fetch: Any, uri: str) -> None:
    good = make_run(uri, status="RUNNING", losses=[3.0, 2.5])
    bad_beat = make_run(uri, status="RUNNING", losses=[3.0])
    store.set_tag(bad_beat, store.HEARTBEAT_TAG, "soon", uri=uri)
    bad_total = make_run(uri, status="COMPLETED", losses=[3.0, 2.0])
    store.set_tag(bad_total, store.TOTAL_STEPS_TAG, "lots", uri=uri)

    data = await get_json(jp_fetch, "runs")

    runs = {r["id"]: r for r in data["runs"]}
    assert list(runs) == [bad_total, bad_beat, good]
    assert runs[good]["error"] is None
    assert runs[good]["progress"]["total_steps"] == 2
    assert runs[bad_total]["error"] == "tag ftmagic.total_steps is not a number: 'lots'"
    assert runs[bad_total]["status"] == "COMPLETED"
    assert runs[bad_total]["progress"]["step"] == 2
    assert runs[bad_total]["progress"]["total_steps"] is None
    assert runs[bad_total]["loss"] == [[1, 3.0], [2, 2.0]]
    assert runs[bad_beat]["error"] == "tag ftmagic.heartbeat is not a number: 'soon'"
    # without a readable heartbeat the run is alive by its recent RUNNING event
    assert runs[bad_beat]["status"] == "RUNNING"
    detail = await get_json(jp_fetch, "runs", bad_beat)
    assert detail["error"] == runs[bad_beat]["error"]
    assert [e["type"] for e in detail["events"]] == ["CREATED", "RUNNING"]


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_sets_the_flag_the_trainer_polls(jp_fetch: Any, uri: str) -> None:
    run_id = make_run(uri)
    assert not store.cancel_requested(run_id, uri=uri)
    data = await get_json(jp_fetch, "runs", run_id, "cancel", method="POST", body="")
    assert data["id"] == run_id
    assert store.cancel_requested(run_id, uri=uri)


async def test_cancel_of_an_ended_run_is_a_conflict(jp_fetch: Any, uri: str) -> None:
    run_id = make_run(uri, status="COMPLETED")
    error = await error_of(jp_fetch, *API, "runs", run_id, "cancel", method="POST", body="")
    assert error.code == 409
    assert not store.cancel_requested(run_id, uri=uri)


# --- bad ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", [UNKNOWN_ID, "A" * 32, "x" * 32, "a" * 31, "a" * 33, "..", "runs.db", "%00"]
)
async def test_bad_or_unknown_ids_are_json_404(jp_fetch: Any, uri: str, bad_id: str) -> None:
    make_run(uri)
    for method, parts in (("GET", ("runs", bad_id)), ("POST", ("runs", bad_id, "cancel"))):
        body = "" if method == "POST" else None
        error = await error_of(jp_fetch, *API, *parts, method=method, body=body)
        assert error.code == 404
        assert error.response is not None
        text = error.response.body.decode()
        assert json.loads(text)["message"] in ("Run not found", "Not found")
        assert "Traceback" not in text


async def test_path_traversal_ids_are_404(
    jp_fetch: Any, jp_serverapp: Any, jp_auth_header: dict[str, str], uri: str
) -> None:
    make_run(uri)
    error = await error_of(jp_fetch, *API, "runs", "..", "..", "..", "etc", "passwd")
    assert error.code == 404
    # An escaped traversal reaches the run handler as one id, and stops at the id check.
    base = f"http://127.0.0.1:{jp_serverapp.port}{jp_serverapp.base_url}ftmagic/api/runs/"
    client = tornado.httpclient.AsyncHTTPClient()
    for raw in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2E%2E%2Fmlflow.db", "..%5C..%5Cmlflow.db"):
        response = await client.fetch(base + raw, headers=jp_auth_header, raise_error=False)
        assert response.code == 404, raw
        assert json.loads(response.body)["message"] == "Run not found"
        assert b"passwd" not in response.body


async def test_unknown_api_path_is_json_404(jp_fetch: Any, uri: str) -> None:
    error = await error_of(jp_fetch, *API, "nothing", "here")
    assert error.code == 404
    assert error.response is not None
    assert json.loads(error.response.body)["message"] == "Not found"


async def test_fields_are_the_run_configs_with_help_and_choices(jp_fetch: Any, uri: str) -> None:
    from ftmagic.config import RunConfig, TaskType

    fields = (await get_json(jp_fetch, "fields"))["fields"]
    assert [f["name"] for f in fields] == RunConfig.field_names()
    by_name = {f["name"]: f for f in fields}
    assert by_name["learning_rate"]["help"] == RunConfig.help()["learning_rate"]
    assert by_name["learning_rate"]["values"] == []
    assert by_name["task_type"]["values"] == list(TaskType)
    assert by_name["model"]["values"][0] == "ftmagic/tiny-random-base"  # tiny ones, smallest first
    assert "ftmagic/tiny-random-chat" in by_name["model"]["values"]


# --- auth and XSRF ------------------------------------------------------------------------------


async def test_requests_without_auth_are_refused(jp_fetch: Any, uri: str) -> None:
    run_id = make_run(uri)
    no_auth = {"Authorization": ""}
    for parts, method in (
        (("runs",), "GET"),
        (("runs", run_id), "GET"),
        (("runs", run_id, "cancel"), "POST"),
        (("fields",), "GET"),
    ):
        body = "" if method == "POST" else None
        error = await error_of(jp_fetch, *API, *parts, method=method, body=body, headers=no_auth)
        assert error.code == 403, parts
    assert not store.cancel_requested(run_id, uri=uri)


async def test_cookie_authenticated_post_needs_the_xsrf_token(jp_fetch: Any, uri: str) -> None:
    run_id = make_run(uri)
    # A token request logs in: the server answers with a login cookie, as for a browser.
    response = await jp_fetch(*API, "runs")
    cookies = SimpleCookie()
    for header in response.headers.get_list("Set-Cookie"):
        cookies.load(header)
    login = "; ".join(f"{k}={v.value}" for k, v in cookies.items() if k.startswith("username"))
    assert login, "the token request set no login cookie"
    cookie_only = {"Authorization": "", "Cookie": login}

    listed = await jp_fetch(*API, "runs", headers=cookie_only)  # GET with the cookie is fine
    assert listed.code == 200

    error = await error_of(
        jp_fetch, *API, "runs", run_id, "cancel", method="POST", body="", headers=cookie_only
    )
    assert error.code == 403
    assert not store.cancel_requested(run_id, uri=uri)

    xsrf = "0123456789abcdef0123456789abcdef"
    with_xsrf = {**cookie_only, "Cookie": f"{login}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    done = await jp_fetch(*API, "runs", run_id, "cancel", method="POST", body="", headers=with_xsrf)
    assert done.code == 200
    assert store.cancel_requested(run_id, uri=uri)


# --- settings -----------------------------------------------------------------------------------


class TestMlflowUiSetting:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {
            "ServerApp": {"jpserver_extensions": {"ftmagic": True}},
            "FtmagicExtension": {"mlflow_ui_url": "http://127.0.0.1:5055/"},
        }

    async def test_configured_ui_url_reaches_the_sidebar(self, jp_fetch: Any, uri: str) -> None:
        data = await get_json(jp_fetch, "runs")
        assert data["mlflow_ui_url"] == "http://127.0.0.1:5055"


def test_ui_url_from_env_or_a_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTMAGIC_MLFLOW_UI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert FtmagicExtension().resolved_ui_url() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert FtmagicExtension().resolved_ui_url() == "http://127.0.0.1:5000"
    monkeypatch.setenv("FTMAGIC_MLFLOW_UI", "http://ui.example:8080/mlflow/")
    assert FtmagicExtension().resolved_ui_url() == "http://ui.example:8080/mlflow"
    assert FtmagicExtension(mlflow_ui_url="http://a:1").resolved_ui_url() == "http://a:1"


def test_default_store_is_in_the_root_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ext = FtmagicExtension(root_dir=str(tmp_path))
    assert ext.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert ext.resolved_tracking_uri() == "sqlite:///elsewhere.db"
    assert FtmagicExtension(tracking_uri="http://h:1").resolved_tracking_uri() == "http://h:1"


def test_downsample_keeps_the_ends_and_the_order() -> None:
    points = [(i, float(i * i)) for i in range(1, 1001)]
    picked = downsample(points, 50)
    assert len(picked) == 50
    assert picked[0] == [1, 1.0]
    assert picked[-1] == [1000, 1_000_000.0]
    assert [p[0] for p in picked] == sorted({p[0] for p in picked})
    assert downsample(points[:10], 50) == [[s, v] for s, v in points[:10]]
    assert downsample(points, 1) == [[1000, 1_000_000.0]]
    assert downsample([], 50) == []


def test_loading_the_extension_imports_nothing_heavy() -> None:
    code = (
        "import sys, ftmagic.server_extension as m; "
        "heavy = [n for n in ('mlflow', 'torch', 'transformers', 'pandas') if n in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
