"""The ``Run`` API every view reads: lookup, listing, deletion, status, progress, metrics, waiting
and display, on a real SQLite MLflow store."""

from __future__ import annotations

import pickle
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fixtures_tracking import make_config
from ftmagic.errors import RunError
from ftmagic.tracking import store
from ftmagic.tracking.run import HEARTBEAT_TIMEOUT_S, Run, delete_run, get_run, list_runs


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}"


def test_get_run_by_id_and_by_name(uri: str) -> None:
    config = make_config(experiment_path="lookup")
    run_id = store.create_run(config, backend="inkernel", uri=uri)
    run = get_run(run_id, uri=uri)
    assert run.run_id == run_id
    assert run.name.startswith("tiny-random-chat-ner-")
    assert run.experiment_path == "lookup"
    assert run.config == config
    assert run.status == "PENDING" and not run.is_done
    assert run.created.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - run.created).total_seconds()) < 600
    assert [e.type for e in run.events] == ["CREATED"]
    by_name = get_run(run.name, uri=uri)
    assert by_name.run_id == run_id
    assert get_run(by_name).run_id == run_id


def test_bad_ids_and_unknown_names_are_run_errors(uri: str) -> None:
    run_id = store.create_run(make_config(experiment_path="lookup"), backend="inkernel", uri=uri)
    name = get_run(run_id, uri=uri).name
    with pytest.raises(RunError, match="neither a run id nor a run name"):
        get_run("../../etc/passwd'", uri=uri)
    with pytest.raises(RunError, match="not an MLflow run id"):
        Run("../../" + "a" * 26, uri=uri)
    with pytest.raises(RunError, match="no ftmagic run with id"):
        get_run("0" * 32, uri=uri)
    with pytest.raises(RunError, match=f"did you mean '{name}'"):
        get_run(name[:-1] + "x", uri=uri)


def test_plain_mlflow_runs_are_not_ftmagic_runs(uri: str) -> None:
    client = MlflowClient(tracking_uri=uri)
    experiment = store.experiment_id(client, "mixed")
    other = client.create_run(experiment, run_name="someone-elses-run").info.run_id
    ours = store.create_run(make_config(experiment_path="mixed"), backend="local", uri=uri)
    assert [r.run_id for r in list_runs("mixed", uri=uri)] == [ours]
    with pytest.raises(RunError, match="no ftmagic run"):
        get_run(other, uri=uri)
    with pytest.raises(RunError, match="no ftmagic run named"):
        get_run("someone-elses-run", uri=uri)


def test_list_runs_newest_first_across_experiments(uri: str) -> None:
    ids = []
    for experiment in ("list-a", "list-b", "list-a"):
        ids.append(
            store.create_run(make_config(experiment_path=experiment), backend="inkernel", uri=uri)
        )
        time.sleep(0.01)  # distinct start times
    everything = [r.run_id for r in list_runs(uri=uri)]
    assert everything[:3] == ids[::-1]
    only_a = list_runs("list-a", uri=uri)
    assert [r.run_id for r in only_a] == [ids[2], ids[0]]
    assert all(r.experiment_path == "list-a" for r in only_a)
    assert [r.run_id for r in list_runs(uri=uri, limit=2)] == ids[:0:-1]
    assert list_runs("no-such-experiment", uri=uri) == []


def test_delete_run_removes_it_and_its_artifacts(uri: str) -> None:
    run_id = store.create_run(make_config(experiment_path="delete"), backend="inkernel", uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    store.heartbeat(run_id, uri=uri)
    with pytest.raises(RunError, match="still running"):
        delete_run(run_id, uri=uri)
    store.set_status(run_id, "COMPLETED", uri=uri)
    artifacts = store.local_artifact_dir(MlflowClient(tracking_uri=uri), run_id)
    assert artifacts is not None and (artifacts / "config.yaml").exists()
    delete_run(run_id, uri=uri)
    assert not artifacts.exists()
    assert run_id not in [r.run_id for r in list_runs(uri=uri)]
    with pytest.raises(RunError, match="no ftmagic run"):
        get_run(run_id, uri=uri)


def test_status_refresh_and_lost_heartbeat(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="local", uri=uri)
    run = get_run(run_id, uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    assert run.status == "PENDING"  # cached until refresh
    store.heartbeat(run_id, uri=uri)
    run.refresh()
    assert run.status == "RUNNING" and run.is_alive and not run.is_done
    assert run.heartbeat_age_s is not None and run.heartbeat_age_s < HEARTBEAT_TIMEOUT_S
    # the trainer's process died: its last heartbeat is old
    store.set_tag(run_id, store.HEARTBEAT_TAG, time.time() - HEARTBEAT_TIMEOUT_S - 5, uri=uri)
    run.refresh()
    assert run.status == "FAILED"
    assert run.status_reason == "heartbeat lost"
    assert run.recorded_status == "RUNNING"
    assert not run.is_alive and run.is_done
    store.set_status(run_id, "STOPPED", "cancelled by user", uri=uri)
    assert run.refresh().status == "STOPPED"
    assert run.status_reason == "cancelled by user"
    store.set_status(run_id, "RUNNING", "resumed", uri=uri)  # alive before its first beat
    assert run.refresh().status == "RUNNING" and run.is_alive


def test_metrics_keep_the_latest_value_of_a_repeated_step(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    with store.MetricsLogger(run_id, uri=uri) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"train/loss": 4.0 - step, "train/lr": 0.001})
        logger.flush()
        logger.log(3, {"train/loss": 0.5})  # a resumed run repeats step 3
        logger.log(2, {"eval/loss": 2.5})
    run = get_run(run_id, uri=uri)
    assert run.metrics() == {
        "eval/loss": [(2, 2.5)],
        "train/loss": [(1, 3.0), (2, 2.0), (3, 0.5)],
        "train/lr": [(1, 0.001), (2, 0.001), (3, 0.001)],
    }
    assert run.metrics(["eval/loss"]) == {"eval/loss": [(2, 2.5)]}


def test_polled_metrics_read_new_points_and_survive_reordering(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    run = get_run(run_id, uri=uri)
    assert run.metrics(["train/loss"]) == {"train/loss": []}
    with store.MetricsLogger(run_id, uri=uri) as logger:
        for step in range(1, 4):
            logger.log(step, {"train/loss": float(step)})
        logger.flush()
        assert run.metrics(["train/loss"])["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
        for step in range(4, 6):
            logger.log(step, {"train/loss": float(step)})
    assert run.metrics(["train/loss"])["train/loss"] == [(s, float(s)) for s in range(1, 6)]
    # a point stamped before the others lands first in the store's order
    MlflowClient(tracking_uri=uri).log_metric(run_id, "train/loss", 0.5, timestamp=1, step=0)
    assert run.metrics(["train/loss"])["train/loss"] == [(0, 0.5)] + [
        (s, float(s)) for s in range(1, 6)
    ]
    assert get_run(run_id, uri=uri).metrics() == run.metrics()


def test_progress_from_metrics_and_tags(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    run = get_run(run_id, uri=uri)
    assert run.progress == {
        "step": 0,
        "total_steps": None,
        "tokens": None,
        "elapsed_s": None,
        "eta_s": None,
    }
    store.set_status(run_id, "RUNNING", uri=uri)
    store.set_tag(run_id, store.TOTAL_STEPS_TAG, 20, uri=uri)
    store.heartbeat(run_id, uri=uri)
    with store.MetricsLogger(run_id, uri=uri) as logger:
        for step in range(1, 6):
            logger.log(step, {"train/loss": 1.0, "train/tokens": step * 4096})
    progress = run.refresh().progress
    assert progress["step"] == 5 and progress["total_steps"] == 20
    assert progress["tokens"] == 5 * 4096
    assert progress["elapsed_s"] is not None and progress["elapsed_s"] >= 0
    assert progress["eta_s"] == pytest.approx(progress["elapsed_s"] * 3, rel=0.2, abs=1.0)
    store.set_status(run_id, "COMPLETED", uri=uri)
    assert run.refresh().progress["eta_s"] is None


@pytest.mark.timeout(120)
def test_unreadable_number_tags_read_as_absent(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="local", uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    store.set_tag(run_id, store.HEARTBEAT_TAG, "later", uri=uri)
    store.set_tag(run_id, store.TOTAL_STEPS_TAG, "inf", uri=uri)
    run = get_run(run_id, uri=uri)
    assert run.status is store.RunStatus.RUNNING and run.is_alive  # by its RUNNING event
    assert run.heartbeat_age_s is not None and run.heartbeat_age_s < 60
    assert run.progress["total_steps"] is None
    assert run.tag_problems == [
        "tag ftmagic.heartbeat is not a number: 'later'",
        "tag ftmagic.total_steps is not a number: 'inf'",
    ]
    store.set_tag(run_id, store.STATUS_TAG, "DONE", uri=uri)
    assert run.refresh().status is store.RunStatus.PENDING
    assert run.tag_problems[-1] == "tag ftmagic.status is not a status: 'DONE'"


def test_wait_returns_when_done_and_times_out_otherwise(uri: str) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    store.set_status(run_id, "RUNNING", uri=uri)
    store.heartbeat(run_id, uri=uri)
    run = get_run(run_id, uri=uri)
    with pytest.raises(RunError, match=r"still RUNNING after 0\.3 s"):
        run.wait(timeout=0.3, poll=0.1)
    finisher = threading.Timer(0.3, store.set_status, (run_id, "COMPLETED"), {"uri": uri})
    finisher.start()
    try:
        assert run.wait(timeout=60, poll=0.1) is run
    finally:
        finisher.join()
    assert run.status == "COMPLETED"


def test_display_checkpoints_generations_and_pickling(uri: str, tmp_path: Path) -> None:
    run_id = store.create_run(make_config(), backend="inkernel", uri=uri)
    run = get_run(run_id, uri=uri)
    store.log_generations(run_id, 4, [{"prompt": "Who are you?", "response": "a model"}], uri=uri)
    folder = store.checkpoint_dir(run_id, 4, uri=uri)
    (folder / "config.json").write_text("{}")
    store.commit_checkpoint(run_id, folder, 4, {"tokens": 100, "eval_loss": 2.0}, uri=uri)
    assert [(c.step, c.tokens, c.eval_loss) for c in run.checkpoints] == [(4, 100, 2.0)]
    assert run.generations() == [{"step": 4, "prompt": "Who are you?", "response": "a model"}]
    assert run.registered_model is None
    text = repr(run)
    assert run.name in text and "status=PENDING" in text
    page = run._repr_html_()
    assert run.name in page and "PENDING" in page and run_id in page
    clone = pickle.loads(pickle.dumps(run))
    assert clone.run_id == run_id and clone.status == "PENDING" and clone._model is None


def test_config_falls_back_to_params_without_config_yaml(uri: str) -> None:
    config = make_config(eval_prompts=["a", "b"], learning_rate=1e-4, register_to="main.default")
    run_id = store.create_run(config, backend="inkernel", uri=uri)
    artifacts = store.local_artifact_dir(MlflowClient(tracking_uri=uri), run_id)
    assert artifacts is not None
    (artifacts / "config.yaml").unlink()
    assert get_run(run_id, uri=uri).config == config


def test_public_api_reads_runs_from_the_tracking_uri(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ftmagic

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = store.create_run(make_config(experiment_path="api"), backend="inkernel")
    store.set_status(run_id, "COMPLETED", "done")
    assert ftmagic.get(run_id).status == "COMPLETED"
    assert [r.run_id for r in ftmagic.list(experiment_path="api")] == [run_id]
    assert [e.type for e in ftmagic.get_events(run_id)] == ["CREATED", "COMPLETED"]
    assert ftmagic.get_checkpoints(run_id) == []
    ftmagic.delete(run_id)
    assert ftmagic.list(experiment_path="api") == []
