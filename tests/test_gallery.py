"""The checkpoint gallery: a Python metric from the notebook is computed at every checkpoint on
real greedy generations, and promoting a middle checkpoint registers a model version that answers
exactly as that checkpoint did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import ftmagic
from fixtures_train import fast_config, train_env  # noqa: F401 (fixture)
from ftmagic.errors import ConfigError, RunError
from ftmagic.metrics import exact_match, json_list_f1
from ftmagic.tracking import store
from ftmagic.train.scoring import prompt_of


def first_word_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """A notebook-style metric: how often the answer starts with the reference's first word."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(p.split()[:1] == r.split()[:1] for p, r in pairs) / len(pairs)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_notebook_metric_scores_every_checkpoint_and_promote_registers_one(
    train_env: dict[str, Any],  # noqa: F811
) -> None:
    from ftmagic.models.generation import generate, load_for_inference

    calls: list[tuple[list[str], list[str]]] = []

    def metric(predictions: Sequence[str], references: Sequence[str]) -> float:
        calls.append((list(predictions), list(references)))
        return first_word_match(predictions, references)

    config = fast_config(
        train_env,
        training_duration="3ba",
        checkpoint_interval="1ba",
        eval_data_path=str(train_env["eval"]),
        eval_metric=metric,
        eval_metric_samples=3,
        max_new_tokens=8,
    )
    assert config.eval_metric == "python:metric"
    run = ftmagic.create(config).wait(timeout=400, poll=0.3)
    assert run.status == "COMPLETED", run.status_reason
    assert [c.step for c in run.checkpoints] == [1, 2, 3]
    assert len(calls) == 3 and all(len(p) == len(r) == 3 for p, r in calls)
    assert calls[0][1] == calls[2][1]  # the same seeded sample at every checkpoint
    history = run.metrics(["eval/metric"])["eval/metric"]
    assert history == [
        (s, pytest.approx(first_word_match(*c))) for s, c in zip([1, 2, 3], calls, strict=True)
    ]

    gallery = ftmagic.gallery(run)
    assert gallery.metric_name == "metric"
    assert [r.step for r in gallery.rows] == [1, 2, 3]
    for row, (predictions, references) in zip(gallery.rows, calls, strict=True):
        assert [g["prediction"] for g in row.generations] == predictions
        assert [g["reference"] for g in row.generations] == references
        assert row.eval_loss is not None
    best = max(gallery.rows, key=lambda r: (r.metric, -r.step))
    assert gallery.best_step == best.step and "★ best" in gallery._repr_html_()

    # Promote the middle checkpoint: a new version whose answers are that checkpoint's.
    reference = ftmagic.promote(run, 2, register_to="main.gallery.tiny", alias="champion")
    assert reference == "models:/main.gallery.tiny/1"
    folder = store.download_registered_model("models:/main.gallery.tiny@champion")
    model, tokenizer = load_for_inference(folder)
    middle = gallery.row(2).generations
    answers = [generate(model, tokenizer, prompt_of(g["prompt"]), max_new_tokens=8) for g in middle]
    assert answers == [g["prediction"] for g in middle]
    # Promoting it again registers nothing new; an alias given moves to that version.
    again = ftmagic.promote(run, 2, register_to="main.gallery.tiny", alias="challenger")
    assert again == reference
    rows = ftmagic.gallery(run).rows
    assert [r.models for r in rows] == [
        [],
        ["models:/main.gallery.tiny/1 @challenger @champion"],
        [],
    ]
    with pytest.raises(RunError, match="no complete checkpoint at step 7"):
        ftmagic.promote(run, 7, register_to="main.gallery.tiny")


def test_built_in_metrics_and_bad_names() -> None:
    assert exact_match([" a ", "b"], ["a", "c"]) == 0.5
    assert json_list_f1(['["Aspirin"]', "[]"], ['["aspirin", "Ibuprofen"]', "[]"]) == (
        pytest.approx(2 / 3)
    )
    config = ftmagic.RunConfig(eval_metric="json_list_f1")
    assert config.eval_metric == "json_list_f1"
    with pytest.raises(ConfigError, match=r"eval_metric.*exact_match, json_list_f1"):
        ftmagic.RunConfig(eval_metric="bleu")
    with pytest.raises(ConfigError, match="backend local cannot call") as err:
        ftmagic.create(
            model="ftmagic/tiny-random-chat", eval_metric=first_word_match, backend="local"
        )
    assert err.value.field == "eval_metric" and "python:first_word_match" in str(err.value)


def test_promote_without_a_model_name_says_how(mlflow_store: str) -> None:
    from fixtures_tracking import make_config

    run_id = store.create_run(make_config(experiment_path="gallery"), backend="inkernel")
    with pytest.raises(RunError, match=r"no register_to.*register_to='catalog\.schema"):
        ftmagic.promote(run_id, 2)
