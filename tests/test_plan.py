"""The data plan's pure functions: rows, seeded epochs, steps per duration, micro-batches,
checkpoint marks and the fingerprint, on plain lists (no model, no tokenizer)."""

from __future__ import annotations

import pytest

from ftmagic.config import Duration, RunConfig
from ftmagic.data.plan import (
    PlannedStep,
    build_rows,
    checkpoint_steps,
    data_fingerprint,
    epoch_order,
    group_steps,
    make_plan,
    micro_batches,
    plan_steps,
    resolve_pack_length,
    trained_count,
)
from ftmagic.data.render import TokenizedExample


def example(length: int, trained_from: int = 0) -> TokenizedExample:
    return TokenizedExample(list(range(1, length + 1)), [i >= trained_from for i in range(length)])


@pytest.mark.timeout(30)
def test_rows_pack_best_fit_or_one_example_each() -> None:
    lengths = [60, 50, 40, 30, 20, 10]
    rows = build_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 3  # 210 tokens need at least three rows of 100
    assert build_rows(lengths, None) == [[0], [1], [2], [3], [4], [5]]


@pytest.mark.timeout(30)
def test_pack_length_follows_the_config_and_the_longest_example() -> None:
    assert resolve_pack_length([10, 300], RunConfig(pack_length=256), 2048) == 300
    assert resolve_pack_length([10, 30], RunConfig(pack_length=256), 2048) == 256
    assert resolve_pack_length([10, 30], RunConfig(packing=False), 2048) is None
    assert resolve_pack_length([100, 60, 60], RunConfig(), 2048) == 120


@pytest.mark.timeout(30)
def test_epochs_are_seeded_shuffles() -> None:
    first = epoch_order(50, seed=7, epoch=0)
    assert sorted(first) == list(range(50))
    assert first == epoch_order(50, seed=7, epoch=0)
    assert first != epoch_order(50, seed=7, epoch=1)
    assert first != epoch_order(50, seed=8, epoch=0)


@pytest.mark.timeout(30)
def test_steps_fill_the_token_budget() -> None:
    assert group_steps([2, 0, 1], [5, 4, 3], 8) == [[2, 0], [1]]
    assert group_steps([0, 1], [20, 3], 8) == [[0], [1]]  # an oversized row stands alone
    assert group_steps([], [], 8) == []


@pytest.mark.timeout(30)
def test_durations_in_epochs_batches_and_tokens() -> None:
    row_tokens, row_trained = [10] * 10, [9] * 10
    one_epoch = plan_steps(row_tokens, row_trained, Duration.parse("1ep"), 20, seed=3)
    assert len(one_epoch) == 5 and {s.epoch for s in one_epoch} == {0}
    assert sorted(r for s in one_epoch for r in s.rows) == list(range(10))
    assert all(s.tokens == 20 and s.trained_tokens == 18 for s in one_epoch)
    more = plan_steps(row_tokens, row_trained, Duration.parse("1.5ep"), 20, seed=3)
    assert len(more) == 8 and more[:5] == one_epoch and {s.epoch for s in more[5:]} == {1}
    batches = plan_steps(row_tokens, row_trained, Duration.parse("12ba"), 20, seed=3)
    assert len(batches) == 12 and batches[:5] == one_epoch
    tokens = plan_steps(row_tokens, row_trained, Duration.parse("45tok"), 20, seed=3)
    assert [s.tokens for s in tokens] == [20, 20, 20]
    assert plan_steps([], [], Duration.parse("3ep"), 20, seed=3) == []


@pytest.mark.timeout(30)
def test_checkpoints_on_every_interval_and_the_last_step() -> None:
    steps = [PlannedStep(epoch, (0,), 100, 90) for epoch in (0, 0, 0, 0, 1, 1, 1, 1, 2)]
    assert checkpoint_steps(steps, Duration.parse("3ba")) == {3, 6, 9}
    assert checkpoint_steps(steps, Duration.parse("4ba")) == {4, 8, 9}
    assert checkpoint_steps(steps, Duration.parse("0.5ep")) == {2, 4, 6, 8, 9}
    assert checkpoint_steps(steps, Duration.parse("250tok")) == {3, 5, 8, 9}
    assert checkpoint_steps([], Duration.parse("1ba")) == set()


@pytest.mark.timeout(30)
def test_micro_batches_stay_within_the_budget() -> None:
    assert micro_batches([7, 3, 5], [300, 300, 600], 700) == [[7, 3], [5]]
    assert micro_batches([1, 2], [900, 100], 512) == [[1], [2]]


@pytest.mark.timeout(30)
def test_trained_tokens_skip_the_first_token() -> None:
    assert trained_count(example(5)) == 4
    assert trained_count(example(5, trained_from=3)) == 2
    assert trained_count(TokenizedExample([], [])) == 0


@pytest.mark.timeout(30)
def test_fingerprint_changes_with_what_decides_the_batches() -> None:
    config = RunConfig(tokens_per_batch=512, seed=1)
    base = data_fingerprint([5, 6], [4, 5], config, 16)
    assert base == data_fingerprint([5, 6], [4, 5], config, 16)
    assert len(base) == 16
    changed = [
        data_fingerprint([5, 7], [4, 5], config, 16),
        data_fingerprint([5, 6], [4, 4], config, 16),
        data_fingerprint([5, 6], [4, 5], config, 32),
        data_fingerprint([5, 6], [4, 5], config.replace(seed=2), 16),
        data_fingerprint([5, 6], [4, 5], config.replace(tokens_per_batch=256), 16),
    ]
    assert base not in changed and len(set(changed)) == 5
    same = data_fingerprint([5, 6], [4, 5], config.replace(learning_rate=0.1), 16)
    assert same == base


@pytest.mark.timeout(30)
def test_make_plan_counts_every_token_once_per_epoch() -> None:
    examples = [example(n, trained_from=n // 2) for n in (40, 35, 30, 25, 20, 15, 10, 5)]
    config = RunConfig(training_duration="2ep", tokens_per_batch=64, checkpoint_interval="1ep")
    plan = make_plan(examples, config, context_length=2048)
    assert plan.pack_length is not None and plan.pack_length >= 40
    for epoch in (0, 1):
        steps = [s for s in plan.steps if s.epoch == epoch]
        assert sum(s.tokens for s in steps) == 180
        assert sum(s.trained_tokens for s in steps) == sum(trained_count(e) for e in examples)
        assert sorted(r for s in steps for r in s.rows) == list(range(len(plan.rows)))
    per_epoch = len([s for s in plan.steps if s.epoch == 0])
    assert plan.checkpoint_after == {per_epoch, len(plan.steps)}
    assert all(plan.row_width(r) == plan.pack_length for r in range(len(plan.rows)))
    padded = make_plan(examples, config.replace(packing=False), context_length=2048)
    assert padded.rows == [[i] for i in range(8)]
    assert [padded.row_width(r) for r in range(8)] == [40, 35, 30, 25, 20, 15, 10, 5]
    assert padded.fingerprint != plan.fingerprint
