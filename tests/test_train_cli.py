"""``ftmagic train`` and ``ftmagic demo`` as the CLI calls them: exit codes and the summary."""

from __future__ import annotations

from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config
from ftmagic.train.cli import DEMO_MODEL_NAME, demo_config, train_command

train_env = fixtures_train.train_env


def test_train_command_summarises_and_registers(
    train_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from ftmagic.tracking import store

    config = fast_config(
        train_env,
        training_duration="3ba",
        eval_data_path=str(train_env["eval"]),
        eval_prompts=["Extract the drug names: the patient took modipine."],
        max_new_tokens=8,
        register_to="main.clitests.ner",
    )
    assert train_command(config) == 0
    out = capsys.readouterr().out
    run_id = out.split("run ", 1)[1].split(":", 1)[0]
    assert f"run {run_id}: COMPLETED" in out
    assert "final loss" in out and "eval loss" in out and "tokens/s" in out
    assert "models:/main.clitests.ner/1" in out
    assert f"mlflow ui --backend-store-uri {train_env['uri']}" in out
    assert "mlflow models serve -m models:/main.clitests.ner/1" in out
    assert "/checkpoints" in out
    generations = store.read_generations(run_id)
    assert [g["step"] for g in generations] == [3]
    assert generations[0]["prompt"].startswith("Extract the drug names")


def test_failed_run_exits_1_with_the_reason(
    train_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_command(fast_config(train_env, model="ftmagic/tiny-chta")) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "did you mean" in out and "--resume" in out


def test_resume_needs_a_run_id(
    train_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_command(fast_config(train_env), resume=True) == 2
    assert "--run-id" in capsys.readouterr().err


def test_demo_config_is_valid_and_short() -> None:
    from ftmagic.data.validate import validate

    config = demo_config()
    assert config.register_to == DEMO_MODEL_NAME
    assert (
        config.duration.unit == "ba" and config.duration.value * config.tokens_per_batch <= 300_000
    )
    report = validate(config)
    assert report.ok, report.errors
