"""A run's small artifacts: ``config.yaml``, the eval generations tables and JSON records (read
from the artifact folder when it is local, else downloaded)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.tracking.client import client, local_artifact_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

CONFIG_FILE = "config.yaml"
GENERATIONS_FILE = "eval_generations.json"
SCORED_FILE = "eval_metric_generations.json"
SCORED_COLUMNS = ("prompt", "reference", "prediction")


def log_generations(
    run_id: str, step: int, rows: list[dict[str, Any]], *, uri: str | None = None
) -> None:
    """Append eval-prompt generations (``prompt``, ``response``) at ``step`` to the run's table."""
    if not rows:
        return
    data = {
        "step": [int(step)] * len(rows),
        "prompt": [str(r.get("prompt", "")) for r in rows],
        "response": [str(r.get("response", "")) for r in rows],
    }
    client(uri).log_table(run_id, data=data, artifact_file=GENERATIONS_FILE)


def read_generations(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The eval-prompt generations table as rows ``{step, prompt, response}``."""
    text = artifact_text(run_id, GENERATIONS_FILE, uri=uri)
    return table_rows(json.loads(text)) if text else []


def log_scored_generations(
    run_id: str, step: int, rows: list[dict[str, str]], *, uri: str | None = None
) -> None:
    """Append the eval_metric's sample at ``step`` (``prompt``, ``reference``, ``prediction``)
    to the run's table ``eval_metric_generations.json``."""
    if rows:
        data: dict[str, list[Any]] = {"step": [int(step)] * len(rows)}
        data.update({k: [str(r.get(k, "")) for r in rows] for k in SCORED_COLUMNS})
        client(uri).log_table(run_id, data=data, artifact_file=SCORED_FILE)


def read_scored_generations(run_id: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """The eval_metric's generations as rows ``{step, prompt, reference, prediction}``."""
    table = read_json(run_id, SCORED_FILE, uri=uri)
    return table_rows(table) if table else []


def table_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a table logged with ``log_table`` (``columns`` and ``data``) as dicts."""
    return [dict(zip(table["columns"], row, strict=False)) for row in table["data"]]


def read_config_text(run_id: str, *, uri: str | None = None) -> str | None:
    """The run's ``config.yaml`` artifact, or None when it is missing."""
    return artifact_text(run_id, CONFIG_FILE, uri=uri)


def log_json(run_id: str, data: dict[str, Any], name: str, *, uri: str | None = None) -> None:
    """Write ``data`` as the run's JSON artifact ``name`` (replacing an earlier one)."""
    client(uri).log_dict(run_id, data, name)


def read_json(run_id: str, name: str, *, uri: str | None = None) -> dict[str, Any] | None:
    """The run's JSON artifact ``name``, or None when it is missing."""
    text = artifact_text(run_id, name, uri=uri)
    return None if text is None else dict(json.loads(text))


def artifact_text(run_id: str, name: str, *, uri: str | None = None) -> str | None:
    """The text of the run's top-level artifact ``name``, or None when it is missing: read from
    the artifact folder when it is local, else downloaded."""
    mlflow_client = client(uri)
    root = local_artifact_dir(mlflow_client, run_id)
    if root is None:
        return _remote_text(mlflow_client, run_id, name)
    path = root / name
    return path.read_text(encoding="utf-8") if path.exists() else None


def _remote_text(mlflow_client: MlflowClient, run_id: str, name: str) -> str | None:
    if name not in {f.path for f in mlflow_client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(mlflow_client.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")
