"""Helpers for the trainer, resume, in-kernel and train-CLI tests: a module-wide SQLite MLflow
store, small slices of the bundled NER chats, and a fast config on the built-in tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from ftmagic.config import RunConfig

NER = Path(str(resources.files("ftmagic.resources") / "ner"))


def write_slice(source: Path, target: Path, count: int, start: int = 0) -> Path:
    """The ``count`` lines of ``source`` from ``start`` on, written to ``target``."""
    lines = source.read_text(encoding="utf-8").splitlines()[start : start + count]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def train_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SQLite MLflow store (artifacts next to it) and NER data shared by one test module."""
    root = tmp_path_factory.mktemp("train-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield {
            "root": root,
            "uri": f"sqlite:///{root / 'mlflow.db'}",
            "train": write_slice(NER / "train.jsonl", root / "train.jsonl", 160),
            "eval": write_slice(NER / "eval.jsonl", root / "eval.jsonl", 24),
        }


def fast_config(env: dict[str, Any], **changes: Any) -> RunConfig:
    """A run that takes well under a second per step on 2 CPUs."""
    base: dict[str, Any] = {
        "model": "ftmagic/tiny-random-chat",
        "train_data_path": str(env["train"]),
        "training_duration": "6ba",
        "checkpoint_interval": "100ba",
        "tokens_per_batch": 512,
        "micro_batch_tokens": 512,
        "learning_rate": 2e-3,
        "warmup_steps": 1,
        "validate_inputs": False,
        "experiment_path": "trainer-tests",
    }
    base.update(changes)
    return RunConfig.from_dict(base)


def losses_of(run_id: str) -> dict[int, float]:
    """``train/loss`` by step, read back from MLflow."""
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    return {m.step: m.value for m in history}


def event_types(run_id: str) -> list[str]:
    """The run's event types in order, from its MLflow tags."""
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    events = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("ftmagic.event.")]
    return [e["type"] for e in events]


def status_of(run_id: str) -> str:
    """The run's ftmagic status tag."""
    import mlflow

    return str(mlflow.MlflowClient().get_run(run_id).data.tags.get("ftmagic.status", ""))
