"""Estimates that match reality: steps from the trainer's own plan, time from a measured and
cached calibration, and "estimated X, took Y" recorded on the run. Real runs of the tiny model
against a real SQLite MLflow store."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config
from ftmagic.config import RunConfig
from ftmagic.data import estimate
from ftmagic.data.validate import validate
from ftmagic.train.calibration import measure

train_env = fixtures_train.train_env


def test_steps_come_from_the_trainers_plan(train_env: dict[str, Any]) -> None:
    from ftmagic.data.dataset import load_examples
    from ftmagic.data.plan import make_plan
    from ftmagic.models.loading import load_tokenizer

    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    for changes in (
        {"training_duration": "1.5ep", "checkpoint_interval": "0.5ep"},
        {"training_duration": "3000tok", "packing": False},
        {"training_duration": "2ep", "tokens_per_batch": 300, "pack_length": 512},
    ):
        config = fast_config(train_env, **changes)
        examples = load_examples(config, tokenizer)
        real = make_plan(examples, config, 2048)
        lengths = [len(e.input_ids) for e in examples]
        plan = estimate.plan_run(config, lengths, [], 2048)
        assert plan.steps == len(real.steps), changes
        assert plan.checkpoints == len(real.checkpoint_after), changes
        assert plan.train_batch_tokens >= sum(s.tokens for s in real.steps)


def test_calibration_is_cached_per_model_and_device(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, tokens_per_batch=256, micro_batch_tokens=256)
    plan = estimate.Plan(
        steps=4,
        checkpoints=1,
        train_batch_tokens=1024,
        eval_batch_tokens=0,
        rows_per_micro=2,
        width=100,
        context_length=2048,
    )
    path = estimate.cache_file(config.model, estimate.device_name())
    key = estimate.calibration_key(config, plan)
    if path.exists():  # measure afresh: drop this shape's entry, keep the others
        entries = json.loads(path.read_text())
        entries.pop(key, None)
        path.write_text(json.dumps(entries))
    before = time.time()
    first = estimate.calibrate_model(config, plan, measure)
    assert first.measured_at >= before
    again = estimate.calibrate_model(config, plan, measure)
    assert again == first  # read back, not measured again
    assert (first.rows, first.width) == (1, 128)  # the row shape rounded to a power of two
    assert first.micro_seconds > 0 and first.load_seconds > 0 and first.save_seconds > 0
    assert key in json.loads(path.read_text())
    assert path.parent.name == "estimates" and path.name.startswith("ftmagic_tiny-random-chat-")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_time_estimate_within_half_of_the_measured_time(train_env: dict[str, Any]) -> None:
    """A short run and a longer one (with eval data, eval prompts and two checkpoints): the
    estimate made before each lies within +-50% of the time ``train`` took."""
    from ftmagic.tracking import store
    from ftmagic.train.trainer import train

    runs = {
        "short": {"training_duration": "10ba"},
        "longer": {
            "training_duration": "30ba",
            "checkpoint_interval": "15ba",
            "eval_data_path": str(train_env["eval"]),
            "eval_prompts": ["Which drugs: aspirin with warfarin?"],
            "max_new_tokens": 8,
        },
    }
    # One untimed run first: a process's first run also pays for imports and MLflow's first
    # writes, which are the kernel's start-up, not the run's.
    warm = fast_config(train_env, training_duration="1ba")
    assert train(warm, str(store.create_run(warm, backend="inkernel"))).status == "COMPLETED"
    cache = estimate.cache_file(warm.model, estimate.device_name())
    if cache.exists():  # calibrate now, under the load the runs will see
        cache.unlink()
    for name, changes in runs.items():
        config: RunConfig = fast_config(
            train_env,
            tokens_per_batch=256,
            micro_batch_tokens=256,
            validate_inputs=True,
            **changes,
        )
        report = validate(config, measure=measure)  # calibrates as ftmagic.validate does
        assert report.ok, report.errors
        # Load on a shared machine only ever adds time, so each run is timed three times and the
        # estimate is held to the quickest, as benchmarks take the best of several (twice was not
        # enough under a CPU hog plus a second test worker: a 0.5 s estimate met a 1.2 s best).
        timed = [_timed_run(config) for _ in range(3)]
        took, run_id, result = min(timed, key=lambda t: t[0])
        assert result.status == "COMPLETED", result.reason
        assert report.estimated_steps == result.total_steps
        assert report.estimated_seconds is not None
        ratio = report.estimated_seconds / took
        assert 0.5 <= ratio <= 1.5, (name, report.estimated_seconds, took, report.estimate_parts)
        import mlflow

        tags = mlflow.MlflowClient().get_run(run_id).data.tags
        assert abs(float(tags[estimate.ESTIMATED_TAG]) - report.estimated_seconds) < 0.5 * took
        assert abs(float(tags[estimate.TOOK_TAG]) - took) < 2.0
        events = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("ftmagic.event.")]
        timing = [e["message"] for e in events if e["type"] == "TIMING"]
        assert len(timing) == 1 and timing[0].startswith("estimated ") and ", took " in timing[0]


def _timed_run(config: RunConfig) -> tuple[float, str, Any]:
    from ftmagic.tracking import store
    from ftmagic.train.trainer import train

    run_id = str(store.create_run(config, backend="inkernel"))
    start = time.perf_counter()
    result = train(config, run_id)
    return time.perf_counter() - start, run_id, result


def test_messages() -> None:
    assert estimate.timing_message(40, 52) == "estimated 40 s, took 52 s"
    assert estimate.timing_message(None, 400).startswith("took 7 min (no estimate")
