"""The loop talks only to its reporter: with a recording one, a real run of the tiny model leaves
its metrics, events, generations and committed checkpoints in the recorder, nothing in MLflow."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import fixtures_train
from fixtures_train import fast_config
from ftmagic.config import RunConfig
from ftmagic.data.dataset import load_examples
from ftmagic.models.loading import load_model, load_tokenizer
from ftmagic.train.checkpoint import read_state
from ftmagic.train.distributed import setup as setup_distributed
from ftmagic.train.loop import StepReport, divergence_reason, train_loop
from ftmagic.train.trainer import PreparedData, setup

train_env = fixtures_train.train_env


class RecordingReporter:
    """A ``Reporter`` that keeps what it is told; checkpoints go under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events: list[tuple[str, str, int | None]] = []
        self.logged: dict[int, dict[str, float]] = {}
        self.generated: dict[int, list[dict[str, str]]] = {}
        self.committed: list[tuple[int, Path, dict[str, Any]]] = []
        self.statuses: list[tuple[str, str | None]] = []

    def start_heartbeat(self) -> None:
        pass

    def status(self, status: str, reason: str | None = None) -> None:
        self.statuses.append((status, reason))

    def event(self, kind: str, message: str, step: int | None = None) -> None:
        self.events.append((kind, message, step))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.logged.setdefault(step, {}).update(values)

    def flush(self) -> None:
        pass

    def total_steps(self, total: int) -> None:
        pass

    def timing(self, estimated: float | None = None) -> None:
        pass

    def cancel_requested(self, stop_event: threading.Event | None) -> bool:
        return stop_event is not None and stop_event.is_set()

    def reproducibility(self, config: RunConfig, resolved: dict[str, Any]) -> None:
        pass

    def generations(self, step: int, rows: list[dict[str, str]]) -> None:
        self.generated[step] = rows

    def scored_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        pass

    def checkpoint_folder(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def commit_checkpoint(self, folder: Path, step: int, meta: dict[str, Any]) -> None:
        self.committed.append((step, folder, meta))

    def register(self, folder: Path, name: str) -> str:
        return name

    def close(self) -> None:
        pass


def mlflow_run_count() -> int:
    import mlflow

    client = mlflow.MlflowClient()
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.mark.timeout(240)
def test_loop_reports_to_the_reporter_it_is_given(
    train_env: dict[str, Any], tmp_path: Path
) -> None:
    config = fast_config(
        train_env,
        training_duration="4ba",
        checkpoint_interval="2ba",
        eval_data_path=str(train_env["eval"]),
        eval_prompts=["Tag: Alice met Bob in Paris."],
        max_new_tokens=4,
    )
    tokenizer = load_tokenizer(config.model)
    data = PreparedData(
        tokenizer,
        2048,
        load_examples(config, tokenizer, split="train"),
        load_examples(config, tokenizer, split="eval"),
    )
    reporter = RecordingReporter(tmp_path)
    runs_before = mlflow_run_count()
    session = setup(config, "recorded", setup_distributed(config), reporter, data, None)
    reports: list[StepReport] = []

    assert train_loop(session, None, reports.append) is False

    assert [r.step for r in reports] == [1, 2, 3, 4]
    assert sorted(reporter.logged) == [1, 2, 3, 4]
    for report in reports:
        logged = reporter.logged[report.step]
        assert logged["train/loss"] == report.loss and logged["train/tokens"] == report.tokens
        assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(logged)
    assert reports[-1].tokens == sum(s.tokens for s in session.plan.steps)
    assert [s for s, v in sorted(reporter.logged.items()) if "eval/loss" in v] == [2, 4]
    assert 0 < reporter.logged[4]["eval/loss"] < reporter.logged[2]["eval/loss"] < 20
    assert sorted(reporter.generated) == [2, 4]
    assert reporter.generated[4][0]["prompt"] == "Tag: Alice met Bob in Paris."
    assert [step for step, _, _ in reporter.committed] == [2, 4]
    for step, folder, meta in reporter.committed:
        assert folder == tmp_path / f"step-{step}"
        assert read_state(folder).step == step
        assert meta["loss"] == reporter.logged[step]["train/loss"]
        assert meta["eval_loss"] == reporter.logged[step]["eval/loss"]
        assert meta["tokens"] == reporter.logged[step]["train/tokens"]
    saved = [(kind, step) for kind, _, step in reporter.events if kind == "CHECKPOINT_SAVED"]
    assert saved == [("CHECKPOINT_SAVED", 2), ("CHECKPOINT_SAVED", 4)]
    saved_weights = load_model(str(tmp_path / "step-4")).state_dict()
    for name, value in session.inner.state_dict().items():
        assert torch.equal(saved_weights[name], value), name
    assert reporter.statuses == []  # the recipe, not the loop, sets the status
    assert mlflow_run_count() == runs_before


@pytest.mark.timeout(30)
def test_divergence_is_refused_with_advice() -> None:
    config = RunConfig(learning_rate=0.002, max_grad_norm=0.0)
    assert divergence_reason(3.0, 2.0, 10, [3.1, 2.9, 3.0], 2, config) is None
    assert divergence_reason(float("inf"), 2.0, 10, [3.0], 2, config) == (
        "loss became inf at step 10: lower learning_rate (now 0.002) or set max_grad_norm "
        "(now 0, no clipping)"
    )
    reason = divergence_reason(3.0, float("nan"), 4, [], 0, config.replace(max_grad_norm=1.0))
    assert reason == "gradient norm became NaN at step 4: lower learning_rate (now 0.002)"
    spiked = divergence_reason(16.0, 2.0, 10, [3.0, 3.2, 2.8], 2, config)
    assert spiked is not None and spiked.startswith("loss spiked to 16 at step 10")
    assert divergence_reason(16.0, 2.0, 2, [3.0], 2, config) is None  # in warmup
    assert divergence_reason(0.04, 2.0, 10, [0.005], 2, config) is None  # small absolute rise
