"""The data plan of a run: rows, steps, micro-batches and checkpoint marks, decided before the
first step from the examples' lengths alone.

Pure functions (no model, no tensors but in ``collate_rows``): the trainer builds its batches from
the plan and the time estimate counts steps with the very same functions, so the two never drift.

- **Rows.** Examples are packed (best-fit decreasing) into rows of ``pack_length`` tokens whose
  ``position_ids`` restart at every example; with ``packing: false`` each example is its own
  padded row.
- **Steps.** An epoch is every row once, in an order shuffled with the seed (a fresh shuffle per
  epoch). A step takes rows until it holds about ``tokens_per_batch`` real tokens; its
  micro-batches hold at most ``micro_batch_tokens`` batch tokens each.
- **Durations.** ``Nep`` is whole epochs plus the first fraction of the next epoch's steps,
  ``Nba`` exactly N steps, ``Ntok`` up to the first step reaching N real tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmagic.config import Duration, RunConfig
from ftmagic.data.packing import auto_pack_length, collate, collate_padded, pack

if TYPE_CHECKING:
    from ftmagic.data.render import TokenizedExample


@dataclass(frozen=True)
class PlannedStep:
    """One optimizer step: which rows it trains on, and their real and trained token counts."""

    epoch: int
    rows: tuple[int, ...]
    tokens: int
    trained_tokens: int


@dataclass
class DataPlan:
    """Every step of the run, decided before the first one: rows of example indices and steps."""

    examples: list[TokenizedExample]
    rows: list[list[int]]
    pack_length: int | None
    steps: list[PlannedStep]
    checkpoint_after: set[int]
    fingerprint: str

    def row_width(self, row: int) -> int:
        """Tokens a row occupies in a batch (its padded length for packed rows)."""
        if self.pack_length is not None:
            return self.pack_length
        return len(self.examples[self.rows[row][0]].input_ids)


def make_plan(examples: list[TokenizedExample], config: RunConfig, context_length: int) -> DataPlan:
    """Rows, steps and checkpoint marks for ``examples`` under ``config``.

    >>> from ftmagic.data.render import TokenizedExample
    >>> examples = [TokenizedExample([1] * n, [True] * n) for n in (30, 20, 10)]
    >>> config = RunConfig(training_duration="2ep", tokens_per_batch=40, pack_length=32)
    >>> plan = make_plan(examples, config, context_length=2048)
    >>> plan.pack_length, plan.rows
    (32, [[0], [1, 2]])
    >>> [(s.epoch, s.rows, s.tokens, s.trained_tokens) for s in plan.steps]
    [(0, (0,), 30, 29), (0, (1,), 30, 28), (1, (1,), 30, 28), (1, (0,), 30, 29)]
    """
    lengths = [len(e.input_ids) for e in examples]
    pack_length = resolve_pack_length(lengths, config, context_length)
    rows = build_rows(lengths, pack_length)
    trained = [trained_count(e) for e in examples]
    row_tokens = [sum(lengths[i] for i in row) for row in rows]
    row_trained = [sum(trained[i] for i in row) for row in rows]
    steps = plan_steps(
        row_tokens, row_trained, config.duration, config.tokens_per_batch, config.seed
    )
    return DataPlan(
        examples=examples,
        rows=rows,
        pack_length=pack_length,
        steps=steps,
        checkpoint_after=checkpoint_steps(steps, config.checkpoint_every),
        fingerprint=data_fingerprint(lengths, row_trained, config, pack_length),
    )


def trained_count(example: TokenizedExample) -> int:
    """Tokens of ``example`` that get a loss (its first token never does: nothing predicts it).

    >>> from ftmagic.data.render import TokenizedExample
    >>> trained_count(TokenizedExample([5, 6, 7, 8], [True, False, True, True]))
    2
    """
    return int(sum(bool(t) for t in example.trained[1:]))


def resolve_pack_length(
    lengths: Sequence[int], config: RunConfig, context_length: int
) -> int | None:
    """The row length: None without packing, else ``pack_length`` (at least the longest example)
    or, when unset, the data's own (``auto_pack_length``).

    >>> resolve_pack_length([10, 130, 7], RunConfig(pack_length=64), 2048)
    130
    >>> resolve_pack_length([10, 130, 7], RunConfig(packing=False), 2048) is None
    True
    """
    if not config.packing:
        return None
    if config.pack_length is not None:
        return max(config.pack_length, max(lengths, default=1))
    return int(auto_pack_length(list(lengths), context_length))


def build_rows(lengths: Sequence[int], pack_length: int | None) -> list[list[int]]:
    """Packed bins of example indices, or one example per row when ``pack_length`` is None.

    >>> build_rows([5, 4, 3], 8)
    [[0, 2], [1]]
    >>> build_rows([5, 4, 3], None)
    [[0], [1], [2]]
    """
    if pack_length is None:
        return [[i] for i in range(len(lengths))]
    return [list(row) for row in pack(list(lengths), pack_length)]


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The rows of ``epoch`` in their seeded order (a fresh shuffle per epoch).

    >>> sorted(epoch_order(5, seed=1, epoch=0))
    [0, 1, 2, 3, 4]
    >>> epoch_order(5, seed=1, epoch=0) == epoch_order(5, seed=1, epoch=0)
    True
    """
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def group_steps(
    order: Sequence[int], row_tokens: Sequence[int] | Mapping[int, int], budget: int
) -> list[list[int]]:
    """Consecutive rows of ``order`` grouped into steps of at most ``budget`` real tokens (a row
    larger than the budget makes a step of its own).

    >>> group_steps([0, 1, 2, 3], [3, 3, 3, 5], 6)
    [[0, 1], [2], [3]]
    """
    steps: list[list[int]] = []
    current: list[int] = []
    used = 0
    for row in order:
        if current and used + row_tokens[row] > budget:
            steps.append(current)
            current, used = [], 0
        current.append(row)
        used += row_tokens[row]
    if current:
        steps.append(current)
    return steps


def plan_steps(
    row_tokens: Sequence[int],
    row_trained: Sequence[int],
    duration: Duration,
    tokens_per_batch: int,
    seed: int,
) -> list[PlannedStep]:
    """The run's steps for ``duration``: ``Nep`` whole epochs plus the first fraction of the next
    epoch's steps, ``Nba`` exactly N steps, ``Ntok`` up to the first step reaching N real tokens.

    >>> tokens, trained = [4, 4, 4, 4], [3, 3, 3, 3]
    >>> len(plan_steps(tokens, trained, Duration.parse("1.5ep"), 8, seed=0))
    3
    >>> len(plan_steps(tokens, trained, Duration.parse("5ba"), 8, seed=0))
    5
    >>> [s.tokens for s in plan_steps(tokens, trained, Duration.parse("9tok"), 8, seed=0)]
    [8, 8]
    """
    if not row_tokens:
        return []
    steps: list[PlannedStep] = []
    tokens = 0
    epoch = 0
    while True:
        grouped = group_steps(
            epoch_order(len(row_tokens), seed, epoch), row_tokens, tokens_per_batch
        )
        if duration.unit == "ep":
            remaining = duration.value - epoch
            if remaining <= 0:
                return steps
            grouped = grouped[: math.ceil(min(1.0, remaining) * len(grouped))]
        for rows in grouped:
            if duration.unit == "ba" and len(steps) >= duration.value:
                return steps
            if duration.unit == "tok" and tokens >= duration.value:
                return steps
            step_tokens = sum(row_tokens[r] for r in rows)
            step_trained = sum(row_trained[r] for r in rows)
            steps.append(PlannedStep(epoch, tuple(rows), step_tokens, step_trained))
            tokens += step_tokens
        epoch += 1


def checkpoint_steps(steps: Sequence[PlannedStep], interval: Duration) -> set[int]:
    """The step numbers (1-based) after which a checkpoint is written; the last step always is.

    >>> steps = [PlannedStep(epoch, (0,), 10, 9) for epoch in (0, 0, 0, 1, 1, 1, 2)]
    >>> sorted(checkpoint_steps(steps, Duration.parse("2ba")))
    [2, 4, 6, 7]
    >>> sorted(checkpoint_steps(steps, Duration.parse("1ep")))
    [3, 6, 7]
    >>> sorted(checkpoint_steps(steps, Duration.parse("25tok")))
    [3, 5, 7]
    """
    marks: set[int] = {len(steps)} if steps else set()
    per_epoch: dict[int, int] = {}
    for s in steps:
        per_epoch[s.epoch] = per_epoch.get(s.epoch, 0) + 1
    tokens = 0.0
    seen_in_epoch: dict[int, int] = {}
    previous = 0.0
    for number, s in enumerate(steps, start=1):
        seen_in_epoch[s.epoch] = seen_in_epoch.get(s.epoch, 0) + 1
        tokens += s.tokens
        if interval.unit == "ba":
            progress = float(number)
        elif interval.unit == "tok":
            progress = tokens
        else:
            progress = s.epoch + seen_in_epoch[s.epoch] / per_epoch[s.epoch]
        if math.floor(progress / interval.value + 1e-9) > math.floor(
            previous / interval.value + 1e-9
        ):
            marks.add(number)
        previous = progress
    return marks


def micro_batches(rows: Sequence[int], widths: Sequence[int], budget: int) -> list[list[int]]:
    """Rows split into forward passes of at most ``budget`` batch tokens (at least one row each).

    >>> micro_batches([4, 5, 6], [512, 512, 512], 1024)
    [[4, 5], [6]]
    """
    return group_steps(list(rows), dict(zip(rows, widths, strict=True)), budget)


def data_fingerprint(
    lengths: Sequence[int], row_trained: Sequence[int], config: RunConfig, pack_length: int | None
) -> str:
    """A short hash of what decides the batches, so a resume on changed data is refused."""
    key = json.dumps(
        [list(lengths), list(row_trained), pack_length, config.tokens_per_batch, config.seed]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def collate_rows(plan: DataPlan, rows: Sequence[int], pad_id: int) -> dict[str, Any]:
    """The tensors of one micro-batch: packed rows, or padded single-example rows."""
    if plan.pack_length is not None:
        return dict(collate(plan.examples, [plan.rows[r] for r in rows], plan.pack_length, pad_id))
    return dict(collate_padded([plan.examples[plan.rows[r][0]] for r in rows], pad_id))
