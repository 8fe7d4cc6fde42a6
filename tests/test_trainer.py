"""The trainer on the built-in tiny model: the loss maths, packing, LoRA, durations, failures and
continued training, against a real SQLite MLflow store."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import torch

import fixtures_train
from fixtures_train import event_types, fast_config, losses_of
from ftmagic.config import RunConfig
from ftmagic.data.plan import DataPlan, collate_rows, make_plan
from ftmagic.data.render import TokenizedExample
from ftmagic.train import trainer
from ftmagic.train.distributed import setup as setup_distributed
from ftmagic.train.loop import StepReport, apply_step, rank_micro_batches, run_step
from ftmagic.train.loss import loss_sum
from ftmagic.train.reporter import MlflowReporter
from ftmagic.train.session import Session
from ftmagic.train.trainer import PreparedData, train

train_env = fixtures_train.train_env


def new_run(config: RunConfig) -> str:
    from ftmagic.tracking import store

    return str(store.create_run(config, backend="inkernel"))


def prepared(config: RunConfig) -> PreparedData:
    from ftmagic.data.dataset import load_examples
    from ftmagic.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    return PreparedData(tokenizer, 2048, load_examples(config, tokenizer, split="train"), [])


def session_for(config: RunConfig, data: PreparedData | None = None) -> Session:
    """A ready-to-step session without MLflow (the reporter is disabled)."""
    data = data or prepared(config)
    ctx = setup_distributed(config)
    reporter = MlflowReporter("no-run", enabled=False)
    return trainer.setup(config, "no-run", ctx, reporter, data, None)


def one_step(session: Session) -> float:
    loss, _ = run_step(session, session.plan.steps[0])
    apply_step(session)
    return loss


# --- the loss ---------------------------------------------------------------------------------


def test_gradient_accumulation_matches_one_big_batch(train_env: dict[str, Any]) -> None:
    """One step as one forward pass or as several micro-batches: the same gradient and update."""
    whole = fast_config(
        train_env, tokens_per_batch=2048, micro_batch_tokens=4096, pack_length=256, warmup_steps=0
    )
    split = whole.replace(micro_batch_tokens=512)
    data = prepared(whole)
    sessions = [session_for(c, data) for c in (whole, split)]
    step = sessions[0].plan.steps[0]
    assert step == sessions[1].plan.steps[0]
    parts = [len(rank_micro_batches(s, step)) for s in sessions]
    assert parts[0] == 1 and parts[1] >= 3
    losses = [run_step(s, step)[0] for s in sessions]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    grads = [[p.grad.clone() for p in s.model.parameters()] for s in sessions]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    before = {k: v.detach().clone() for k, v in sessions[0].model.named_parameters()}
    for s in sessions:
        apply_step(s)
    after = [dict(s.model.named_parameters()) for s in sessions]
    moved = 0.0
    for name, start in before.items():
        torch.testing.assert_close(after[0][name], after[1][name], rtol=0, atol=1e-5)
        moved = max(moved, float((after[0][name].detach() - start).abs().max()))
    assert moved > 1e-3  # the step really moved the weights (lr 2e-3)


def test_untrained_tokens_change_nothing(train_env: dict[str, Any]) -> None:
    """An untrained example packed before a trained one: rewriting all its tokens changes neither
    the loss nor any gradient (masking and the example boundary both hold)."""
    config = fast_config(train_env)
    session = session_for(config)
    a, b = session.plan.examples[0], session.plan.examples[1]
    untrained = TokenizedExample(list(a.input_ids), [False] * len(a.input_ids), False)
    rewritten = TokenizedExample(
        [(t * 7 + 3) % 2000 for t in a.input_ids], [False] * len(a.input_ids), False
    )
    results = []
    for first in (untrained, rewritten):
        session.model.zero_grad(set_to_none=True)
        plan = DataPlan([first, b], [[0, 1]], 1024, [], set(), "")
        loss = loss_sum(session.model, collate_rows(plan, [0], session.pad_id))
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in session.model.parameters()]))
    assert results[0][0] > 1.0
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)


def test_packed_and_unpacked_loss_equal(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env)
    session = session_for(config)
    examples = session.plan.examples[:12]
    packed = DataPlan(examples, [list(range(6)), list(range(6, 12))], 2048, [], set(), "")
    padded = DataPlan(examples, [[i] for i in range(12)], None, [], set(), "")
    with torch.no_grad():
        packed_loss = loss_sum(session.model, collate_rows(packed, [0, 1], session.pad_id))
        padded_loss = loss_sum(session.model, collate_rows(padded, list(range(12)), session.pad_id))
        one_by_one = sum(
            loss_sum(session.model, collate_rows(padded, [i], session.pad_id)) for i in range(12)
        )
    assert float(packed_loss) > 10.0
    assert float(packed_loss) == pytest.approx(float(padded_loss), rel=1e-5)
    assert float(packed_loss) == pytest.approx(float(one_by_one), rel=1e-5)


def test_lora_trains_only_the_adapter(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, method="lora", lora_rank=4, lora_dropout=0.0)
    session = session_for(config)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    for _ in range(2):
        one_step(session)
    after = session.model.state_dict()
    adapter = [k for k in before if "lora_" in k]
    base = [k for k in before if "lora_" not in k]
    assert adapter and base
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert sum(not torch.equal(before[k], after[k]) for k in adapter) >= len(adapter) // 2


# --- durations ----------------------------------------------------------------------------------


def test_durations_are_exact(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env)
    data = prepared(config)
    per_epoch = make_plan(data.train, config.replace(training_duration="1ep"), 2048).steps
    assert {s.epoch for s in per_epoch} == {0}
    assert sum(s.tokens for s in per_epoch) == sum(len(e.input_ids) for e in data.train)
    half = make_plan(data.train, config.replace(training_duration="0.5ep"), 2048).steps
    assert len(half) == math.ceil(len(per_epoch) / 2)
    two = make_plan(data.train, config.replace(training_duration="2ep"), 2048).steps
    assert [s.epoch for s in two].count(1) > 0 and two[-1].epoch == 1
    assert [s.rows for s in two[: len(per_epoch)]] == [s.rows for s in per_epoch]
    assert len(make_plan(data.train, config.replace(training_duration="7ba"), 2048).steps) == 7
    tok = make_plan(data.train, config.replace(training_duration="5000tok"), 2048).steps
    total = sum(s.tokens for s in tok)
    assert total >= 5000 and total - tok[-1].tokens < 5000


def test_run_trains_exact_steps_and_loss_drops(train_env: dict[str, Any]) -> None:
    """A real run through MLflow: exactly Nba steps, loss down, weights moved, events in order."""
    config = fast_config(train_env, training_duration="12ba", checkpoint_interval="6ba")
    run_id = new_run(config)
    result = train(config, run_id)
    assert result.status == "COMPLETED", result.reason
    assert result.steps == 12 and result.total_steps == 12
    losses = losses_of(run_id)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < 0.8 * losses[1]
    from ftmagic.tracking import store

    assert [c.step for c in store.list_checkpoints(run_id)] == [6, 12]
    types = event_types(run_id)
    assert types.index("MODEL_INITIALIZED") < types.index("TRAIN_STARTED")
    assert types.count("CHECKPOINT_SAVED") == 2 and types[-1] == "COMPLETED"
    from ftmagic.models.loading import load_model, model_folder

    base = load_model(config.model).state_dict()
    tuned = load_model(str(model_folder(store.download_checkpoint(run_id)))).state_dict()
    assert max(float((base[k] - tuned[k]).abs().max()) for k in base) > 1e-2


def test_tokens_duration_stops_at_first_step_past_the_budget(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, training_duration="3000tok")
    result = train(config, new_run(config))
    assert result.status == "COMPLETED", result.reason
    plan_tokens = [s.tokens for s in make_plan(prepared(config).train, config, 2048).steps]
    assert result.tokens == sum(plan_tokens) and result.tokens >= 3000
    assert result.tokens - plan_tokens[-1] < 3000


# --- failures ------------------------------------------------------------------------------------


def test_absurd_learning_rate_fails_with_step_and_advice(train_env: dict[str, Any]) -> None:
    config = fast_config(
        train_env,
        learning_rate=1.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        training_duration="12ba",
        checkpoint_interval="1ba",
    )
    run_id = new_run(config)
    result = train(config, run_id)
    assert result.status == "FAILED"
    assert result.reason is not None
    assert " at step " in result.reason and "lower learning_rate (now 1)" in result.reason
    failed_step = int(result.reason.split(" at step ")[1].split(",")[0].split(":")[0])
    from ftmagic.tracking import store

    steps = [c.step for c in store.list_checkpoints(run_id)]
    assert steps == list(range(1, failed_step)) and failed_step <= 3
    run = store_status(run_id)
    assert run == ("FAILED", result.reason)


def store_status(run_id: str) -> tuple[str, str | None]:
    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    return tags.get("ftmagic.status", ""), tags.get("ftmagic.status_reason")


def test_unknown_model_lists_close_matches(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, model="ftmagic/tiny-chatt")
    result = train(config, new_run(config))
    assert result.status == "FAILED"
    assert "ftmagic/tiny-random-chat" in str(result.reason) and "did you mean" in str(result.reason)


def test_missing_data_fails_before_the_model_loads(train_env: dict[str, Any]) -> None:
    for validate in (True, False):
        missing = str(train_env["root"] / "nope.jsonl")
        config = fast_config(train_env, train_data_path=missing, validate_inputs=validate)
        run_id = new_run(config)
        result = train(config, run_id)
        assert result.status == "FAILED"
        assert "nope.jsonl" in str(result.reason)
        assert "MODEL_INITIALIZED" not in event_types(run_id)


def test_bad_register_to_fails_before_training(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env)
    run_id = new_run(config)
    config.register_to = "no dots allowed"
    result = train(config, run_id)
    assert result.status == "FAILED" and "register_to" in str(result.reason)
    assert "TRAIN_STARTED" not in event_types(run_id)


def test_unwritable_checkpoint_folder_keeps_earlier_checkpoints(train_env: dict[str, Any]) -> None:
    """The second checkpoint's folder cannot be made (a file is in the way; root ignores
    permissions): the run fails naming the folder, and the first checkpoint stays usable."""
    from ftmagic.tracking import store

    config = fast_config(train_env, training_duration="4ba", checkpoint_interval="2ba")
    run_id = new_run(config)
    blocked = store.local_artifact_dir(store.client(), run_id) / "checkpoints" / "step-0000004"

    def block_folder(report: StepReport) -> None:
        if report.step == 3:
            blocked.write_text("in the way")

    result = train(config, run_id, progress=block_folder)
    assert result.status == "FAILED"
    assert str(blocked) in str(result.reason)
    assert "earlier checkpoints are intact" in str(result.reason)
    assert [c.step for c in store.list_checkpoints(run_id)] == [2]
    assert (store.download_checkpoint(run_id) / "model.safetensors").exists()


# --- continuing -----------------------------------------------------------------------------------


def test_continue_from_a_runs_checkpoint(train_env: dict[str, Any]) -> None:
    first = fast_config(train_env, training_duration="12ba")
    first_id = new_run(first)
    done = train(first, first_id)
    assert done.status == "COMPLETED", done.reason
    first_losses = losses_of(first_id)
    second = first.replace(custom_weights_path=f"runs:/{first_id}", training_duration="2ba")
    result = train(second, new_run(second))
    assert result.status == "COMPLETED", result.reason
    again = losses_of(result.run_id)[1]
    assert again < 0.8 * first_losses[1]
    tail = sum(first_losses[s] for s in range(10, 13)) / 3
    assert again == pytest.approx(tail, rel=0.2)


def test_stop_event_ends_stopped_with_a_checkpoint(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, training_duration="50ba")
    run_id = new_run(config)
    stop = threading.Event()

    def stop_at_three(report: StepReport) -> None:
        if report.step == 3:
            stop.set()

    result = train(config, run_id, stop_event=stop, progress=stop_at_three)
    assert result.status == "STOPPED" and result.steps == 3
    from ftmagic.tracking import store

    assert [c.step for c in store.list_checkpoints(run_id)] == [3]
    assert store_status(run_id)[0] == "STOPPED"
