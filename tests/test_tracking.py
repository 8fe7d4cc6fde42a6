"""The MLflow store: runs, status and events, batched metrics across a server restart, the
checkpoint commit protocol and weights resolution, all on real MLflow stores."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fixtures_tracking import free_port, make_config, start_mlflow_server, stop
from ftmagic.config import RunConfig
from ftmagic.errors import RunError
from ftmagic.tracking import store


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTMAGIC_CACHE", str(tmp_path / "cache"))


def test_default_store_is_sqlite_next_to_the_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    run_id = store.create_run(make_config(), backend="inkernel")
    assert (tmp_path / "mlflow.db").is_file()
    config_file = tmp_path / "mlartifacts" / "ftmagic" / run_id / "artifacts" / "config.yaml"
    assert RunConfig.from_yaml(config_file.read_text()) == make_config()
    # what `mlflow ui --backend-store-uri sqlite:///mlflow.db` reads, from the notebook's folder
    relative = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    assert relative.get_run(run_id).data.tags["ftmagic.status"] == "PENDING"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999"


def test_create_run_records_params_config_tags_and_event(uri: str) -> None:
    config = make_config(experiment_path="/Users/me/ner", learning_rate=3e-4, context_length=None)
    run_id = store.create_run(config, backend="local", uri=uri)
    mlflow_run = MlflowClient(tracking_uri=uri).get_run(run_id)
    params = mlflow_run.data.params
    assert set(params) == set(RunConfig.field_names())
    assert json.loads(params["eval_prompts"]) == ["Who are you?", "Name the city"]
    assert json.loads(params["lora_target_modules"]) == ["all-linear"]
    assert params["learning_rate"] == "0.0003"
    assert params["model"] == "ftmagic/tiny-random-chat"
    tags = mlflow_run.data.tags
    assert tags["ftmagic.status"] == "PENDING"
    assert tags["ftmagic.backend"] == "local"
    assert tags["ftmagic.model"] == "ftmagic/tiny-random-chat"
    assert mlflow_run.info.status == "SCHEDULED"
    assert mlflow_run.info.run_name.startswith("tiny-random-chat-ner-")
    experiment = MlflowClient(tracking_uri=uri).get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == "/Users/me/ner"
    assert RunConfig.from_yaml(store.read_config_text(run_id, uri=uri) or "") == config
    events = store.parse_events(tags)
    assert [e.type for e in events] == ["CREATED"]
    assert events[0].time.tzinfo is not None


def test_run_names_are_unique_within_an_experiment(uri: str) -> None:
    config = make_config(experiment_path="names")
    first = store.create_run(config, backend="inkernel", uri=uri)
    second = store.create_run(config, backend="inkernel", uri=uri)
    client = MlflowClient(tracking_uri=uri)
    names = {client.get_run(r).info.run_name for r in (first, second)}
    assert len(names) == 2
    assert all(n.startswith("tiny-random-chat-ner-") for n in names)


def test_status_changes_are_events_and_end_the_mlflow_run(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    client = MlflowClient(tracking_uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    store.add_event(run_id, "EVAL", "eval loss 2.5", step=4, uri=uri)
    store.set_status(run_id, "COMPLETED", "10 steps done", uri=uri)
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.end_time is not None
    assert mlflow_run.data.tags["ftmagic.status_reason"] == "10 steps done"
    events = store.parse_events(mlflow_run.data.tags)
    assert [(e.type, e.step) for e in events] == [
        ("CREATED", None),
        ("RUNNING", None),
        ("EVAL", 4),
        ("COMPLETED", None),
    ]
    assert events[2].message == "eval loss 2.5"
    assert events[3].message == "10 steps done"
    assert [e.time for e in events] == sorted(e.time for e in events)


@pytest.mark.parametrize(("status", "mlflow_status"), [("FAILED", "FAILED"), ("STOPPED", "KILLED")])
def test_terminal_states_map_to_mlflow(uri: str, status: str, mlflow_status: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    store.set_status(run_id, status, "why", uri=uri)
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == mlflow_status


def test_unknown_status_is_refused(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    with pytest.raises(RunError, match="DONE"):
        store.set_status(run_id, "done", uri=uri)


@pytest.mark.timeout(120)
def test_events_keep_their_order_past_ten(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    for i in range(12):
        store.add_event(run_id, "STEP", f"event {i}", step=i, uri=uri)
    events = store.parse_events(MlflowClient(tracking_uri=uri).get_run(run_id).data.tags)
    assert [e.step for e in events[1:]] == list(range(12))


@pytest.mark.timeout(120)
def test_numbered_events_of_older_runs_are_read_in_time_order(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    client = MlflowClient(tracking_uri=uri)
    for number, (kind, when) in enumerate(
        [("RUNNING", "2020-01-01T00:00:02+00:00"), ("EVAL", "2020-01-01T00:00:03+00:00")], 2
    ):
        value = json.dumps({"type": kind, "time": when, "message": kind.lower(), "step": None})
        client.set_tag(run_id, f"ftmagic.event.{number:04d}", value)
    client.set_tag(run_id, "ftmagic.event.0010", "not json")
    store.add_event(run_id, "RESUMED", "resumed", uri=uri)
    events = store.parse_events(client.get_run(run_id).data.tags)
    assert [e.type for e in events] == ["RUNNING", "EVAL", "CREATED", "RESUMED"]


@pytest.mark.timeout(120)
def test_a_failed_event_write_is_logged_not_raised(
    uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = "0" * 32
    store.add_event(missing, "STEP", "lost", uri=uri)  # no such run: the write fails
    assert f"run {missing}: event STEP not recorded" in caplog.text


def test_statuses_are_the_stored_strings() -> None:
    assert [str(s) for s in store.RunStatus] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "STOPPED",
    ]
    assert store.RunStatus("FAILED") == "FAILED" and f"{store.RunStatus.FAILED}" == "FAILED"
    assert {"COMPLETED", "FAILED", "STOPPED"} == store.TERMINAL
    assert [s.is_terminal for s in store.RunStatus] == [False, False, True, True, True]
    assert json.dumps({"status": store.RunStatus.STOPPED}) == '{"status": "STOPPED"}'


WRITER = textwrap.dedent(
    """
    import pathlib, sys, time
    from ftmagic.tracking import store
    uri, run_id, writer, go = sys.argv[1:5]
    store.client(uri).get_run(run_id)
    print("ready", flush=True)
    while not pathlib.Path(go).exists():
        time.sleep(0.01)
    for i in range(int(sys.argv[5])):
        store.add_event(run_id, "STEP", f"{writer}:{i}", step=i, uri=uri)
    """
)


@pytest.mark.timeout(600)
def test_writers_in_several_processes_lose_no_event(uri: str, tmp_path: Path) -> None:
    run_id = store.create_run(make_config(), backend="local", uri=uri)
    go, writers, count = tmp_path / "go", 4, 30
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, run_id, f"w{w}", str(go), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()  # all start writing at once
        assert [proc.wait(timeout=300) for proc in procs] == [0] * writers
    finally:
        for proc in procs:
            proc.kill()
    events = store.parse_events(MlflowClient(tracking_uri=uri).get_run(run_id).data.tags)
    written = [e.message for e in events if e.type == "STEP"]
    assert len(written) == writers * count
    for w in range(writers):  # each writer's events in the order it wrote them
        assert [m for m in written if m.startswith(f"w{w}:")] == [f"w{w}:{i}" for i in range(count)]


def test_cancel_request_and_resume_clears_it(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    assert not store.cancel_requested(run_id, uri=uri)
    store.request_cancel(run_id, uri=uri)
    assert store.cancel_requested(run_id, uri=uri)
    store.set_status(run_id, "STOPPED", "cancelled", uri=uri)
    store.set_status(run_id, "PENDING", "resuming", uri=uri)
    assert not store.cancel_requested(run_id, uri=uri)
    store.heartbeat(run_id, uri=uri)
    beat = float(MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["ftmagic.heartbeat"])
    assert abs(beat - time.time()) < 600


def test_resubmitting_a_killed_run_clears_its_cancel_request(uri: str) -> None:
    """Killed while RUNNING (no terminal status was written), with a cancel still pending."""
    run_id = store.create_run(make_config(), backend="local", uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    store.request_cancel(run_id, uri=uri)
    store.set_status(run_id, "PENDING", "resuming", uri=uri)
    assert not store.cancel_requested(run_id, uri=uri)


def test_metrics_logger_batches_until_the_interval_or_a_flush(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    logger = store.MetricsLogger(run_id, flush_interval=60.0, uri=uri)
    for step in range(1, 401):
        logger.log(step, {"train/loss": 10.0 / step, "train/lr": 1e-4, "train/tokens": step * 64})
    assert logger.buffered == 1200  # held back: the interval has not passed
    assert logger.flush(timeout=60)
    assert logger.sent == 1200
    assert logger.buffered == 0
    client = MlflowClient(tracking_uri=uri)
    loss = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(1, 401))
    assert {m.step: m.value for m in loss}[4] == pytest.approx(2.5)
    assert logger.close()
    with pytest.raises(RunError, match="closed"):
        logger.log(401, {"train/loss": 0.1})


def _save_fake_checkpoint(folder: Path, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"step": step}))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * (step + 1))


def test_checkpoint_protocol_lists_only_complete_checkpoints(uri: str, tmp_path: Path) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    # step 10: saved straight into the local artifact folder (no copy on commit)
    in_place = store.checkpoint_dir(run_id, 10, uri=uri)
    assert in_place.name == "step-0000010" and "artifacts" in in_place.parts
    _save_fake_checkpoint(in_place, 10)
    committed = store.commit_checkpoint(run_id, in_place, 10, {"tokens": 640}, uri=uri)
    assert committed.step == 10 and committed.tokens == 640
    assert committed.uri == f"runs:/{run_id}/checkpoints/step-0000010"
    # step 20: saved in a staging folder and uploaded
    staged = tmp_path / "staging"
    _save_fake_checkpoint(staged, 20)
    store.commit_checkpoint(run_id, staged, 20, {"tokens": 1280, "eval_loss": 1.5}, uri=uri)
    # step 30: the upload finished but the trainer died before the marker
    crashed = tmp_path / "crashed"
    _save_fake_checkpoint(crashed, 30)
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(crashed), "checkpoints/step-0000030")

    checkpoints = store.list_checkpoints(run_id, uri=uri)
    assert [c.step for c in checkpoints] == [10, 20]
    assert checkpoints[1].eval_loss == 1.5 and checkpoints[1].time is not None
    latest = store.download_checkpoint(run_id, uri=uri)
    assert json.loads((latest / "config.json").read_text()) == {"step": 20}
    marker = json.loads((latest / "COMPLETE").read_text())
    assert marker["files"] == {"config.json": 12, "model.safetensors": 256 * 21}
    assert store.resolve_weights(f"runs:/{run_id}", uri=uri) == latest
    first = store.resolve_weights(f"runs:/{run_id}/checkpoints/step-0000010", uri=uri)
    assert json.loads((first / "config.json").read_text()) == {"step": 10}
    with pytest.raises(RunError, match="no complete checkpoint at step 30; it has 10, 20"):
        store.download_checkpoint(run_id, 30, uri=uri)


def test_commit_refuses_a_folder_that_already_has_a_marker(uri: str, tmp_path: Path) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    folder = tmp_path / "copy"
    _save_fake_checkpoint(folder, 5)
    (folder / "COMPLETE").write_text("{}")
    with pytest.raises(RunError, match="already holds a COMPLETE marker"):
        store.commit_checkpoint(run_id, folder, 5, {}, uri=uri)
    assert store.list_checkpoints(run_id, uri=uri) == []


def test_metrics_and_checkpoints_through_a_restarted_tracking_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus of remote runs: a real ``mlflow server`` (artifacts proxied over HTTP) goes down
    mid-run; metrics logged meanwhile are buffered and all arrive after the restart."""
    # fail fast inside mlflow's HTTP client; the logger's own retry loop must keep the metrics
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    db, artifacts, port = tmp_path / "server.db", tmp_path / "server-artifacts", free_port()
    server_log = tmp_path / "server.log"
    server = start_mlflow_server(db, artifacts, port, server_log, proxied=True)
    try:
        http = f"http://127.0.0.1:{port}"
        run_id = store.create_run(make_config(), backend="ray", uri=http)
        logger = store.MetricsLogger(run_id, flush_interval=0.2, uri=http)
        for step in range(50):
            logger.log(step, {"train/loss": 5.0 - step * 0.01, "train/tokens": step * 100})
        assert logger.flush(timeout=60)
        stop(server)
        for step in range(50, 100):  # training goes on while the server is down
            logger.log(step, {"train/loss": 5.0 - step * 0.01, "train/tokens": step * 100})
        deadline = time.monotonic() + 30
        while logger.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logger.failures > 0
        assert logger.buffered > 0
        server = start_mlflow_server(db, artifacts, port, server_log, proxied=True)
        assert logger.close(timeout=60)
        history = MlflowClient(tracking_uri=http).get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(100))
        assert logger.sent == 200
        _check_remote_checkpoints(run_id, http, tmp_path)
    finally:
        stop(server)


def _check_remote_checkpoints(run_id: str, http: str, tmp_path: Path) -> None:
    staging = store.checkpoint_dir(run_id, 3, uri=http)
    assert "artifacts" not in staging.parts  # remote store: a local staging folder
    _save_fake_checkpoint(staging, 3)
    store.commit_checkpoint(run_id, staging, 3, {"tokens": 30}, uri=http)
    crashed = tmp_path / "crashed"
    _save_fake_checkpoint(crashed, 6)
    MlflowClient(tracking_uri=http).log_artifacts(run_id, str(crashed), "checkpoints/step-0000006")
    assert [c.step for c in store.list_checkpoints(run_id, uri=http)] == [3]
    local = store.download_checkpoint(run_id, uri=http)
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    store.log_generations(run_id, 3, [{"prompt": "Hi", "response": "hello"}], uri=http)
    assert store.read_generations(run_id, uri=http) == [
        {"step": 3, "prompt": "Hi", "response": "hello"}
    ]


def test_generations_append_across_checkpoints(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    assert store.read_generations(run_id, uri=uri) == []
    rows = [
        {"prompt": "Who are you?", "response": "a"},
        {"prompt": "Name the city", "response": "b"},
    ]
    store.log_generations(run_id, 5, rows, uri=uri)
    store.log_generations(run_id, 10, [{**r, "response": r["response"] * 2} for r in rows], uri=uri)
    table = store.read_generations(run_id, uri=uri)
    assert [(r["step"], r["response"]) for r in table] == [
        (5, "a"),
        (5, "b"),
        (10, "aa"),
        (10, "bb"),
    ]


def test_resolve_weights_errors_are_clear(uri: str, tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"custom_weights_path '.*nowhere': not found"):
        store.resolve_weights(str(tmp_path / "nowhere"), uri=uri)
    with pytest.raises(RunError, match="not an MLflow run id"):
        store.resolve_weights("runs:/../../etc", uri=uri)
    with pytest.raises(RunError, match="not found"):
        store.resolve_weights("runs:/" + "0" * 32, uri=uri)
    with pytest.raises(RunError, match="not found"):
        store.resolve_weights("models:/main.default.nothing/1", uri=uri)
    folder = tmp_path / "ckpt"
    _save_fake_checkpoint(folder, 1)
    assert store.resolve_weights(str(folder), uri=uri) == folder.resolve()


def test_registered_model_names() -> None:
    assert store.registered_model_name("main.default", "tiny-chat-ner-1128-1012") == (
        "main.default.tiny_chat_ner_1128_1012"
    )
    assert store.registered_model_name("main.default.my-model", "x") == "main.default.my-model"
    with pytest.raises(RunError, match=r"catalog\.schema"):
        store.registered_model_name("main", "x")
