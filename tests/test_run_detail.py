"""The run detail the JupyterLab sidebar opens (``GET /ftmagic/api/runs/<id>``), for a real run
of the tiny model: its curves, events, and checkpoints with eval loss and generations. Served by
a real Jupyter server with the extension, reading a real SQLite MLflow store."""

from __future__ import annotations

import json
from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config

pytest_plugins = ["pytest_jupyter.jupyter_server"]
train_env = fixtures_train.train_env


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"ftmagic": True}}}


@pytest.fixture(scope="module")
def trained(train_env: dict[str, Any]) -> str:
    """A completed run: 8 steps, checkpoints at 4 and 8 with eval loss and an eval prompt."""
    from ftmagic.tracking import store
    from ftmagic.train.trainer import train

    config = fast_config(
        train_env,
        training_duration="8ba",
        checkpoint_interval="4ba",
        eval_data_path=str(train_env["eval"]),
        eval_prompts=["Which drugs: aspirin with warfarin?"],
        max_new_tokens=5,
    )
    run_id = str(store.create_run(config, backend="inkernel"))
    assert train(config, run_id).status == "COMPLETED"
    return run_id


@pytest.mark.timeout(300)
async def test_detail_has_curves_events_and_checkpoints(
    jp_fetch: Any, train_env: dict[str, Any], trained: str
) -> None:
    from ftmagic.tracking.run import get_run

    response = await jp_fetch("ftmagic", "api", "runs", trained)
    assert response.code == 200
    data = json.loads(response.body)
    run = get_run(trained)
    assert (data["id"], data["name"], data["status"]) == (trained, run.name, "COMPLETED")

    series = run.metrics(["train/loss", "eval/loss", "train/lr"])
    assert data["curves"]["train/loss"] == [[s, pytest.approx(v)] for s, v in series["train/loss"]]
    assert [p[0] for p in data["curves"]["train/loss"]] == list(range(1, 9))
    assert [p[0] for p in data["curves"]["eval/loss"]] == [4, 8]
    assert len(data["curves"]["train/lr"]) == 8

    rows = data["checkpoints"]
    assert [r["step"] for r in rows] == [4, 8]
    eval_loss = dict(series["eval/loss"])
    for row in rows:
        assert row["eval_loss"] == pytest.approx(eval_loss[row["step"]])
        wanted = [g for g in run.generations() if g["step"] == row["step"]]
        assert row["generations"] == [
            {"prompt": "Which drugs: aspirin with warfarin?", "response": g["response"]}
            for g in wanted
        ]
        assert len(row["generations"]) == 1
    assert data["metric_name"] is None

    types = [e["type"] for e in data["events"]]
    assert types[0] == "CREATED" and types[-1] == "COMPLETED"
    assert types.count("CHECKPOINT_SAVED") == 2, types
