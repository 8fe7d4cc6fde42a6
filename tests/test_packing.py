"""Packing: best-fit-decreasing rows, boundary-safe labels and positions, and the same loss as
training on each example alone."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftmagic.data.packing import (
    PADDING_TARGET,
    auto_pack_length,
    collate,
    collate_padded,
    pack,
    padding_fraction,
)
from ftmagic.data.render import TokenizedExample, render
from ftmagic.models.loading import load_model, load_tokenizer


def test_pack_best_fit_decreasing_known_case() -> None:
    assert pack([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    assert pack([8, 8], 8) == [[0], [1]]
    assert pack([], 8) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=64), max_size=120), st.integers(64, 200))
def test_pack_invariants(lengths: list[int], pack_length: int) -> None:
    rows = pack(lengths, pack_length)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in row) for row in rows]
    assert all(load <= pack_length for load in loads)
    assert len(rows) >= math.ceil(sum(lengths) / pack_length)
    # Any-fit packing leaves at most one row half empty or worse.
    assert sum(load <= pack_length / 2 for load in loads) <= 1
    assert pack(lengths, pack_length) == rows


def test_pack_rejects_examples_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than pack_length 8"):
        pack([3, 9], 8)


def test_auto_pack_length() -> None:
    assert auto_pack_length([10, 130, 7], 2048) == 152  # one row: 3.3% padding, the least
    assert (
        auto_pack_length([100, 60, 60], 2048) == 120
    )  # none up to 208 pads under the target; [100], [60, 60] pads least
    assert auto_pack_length([128], 2048) == 128
    assert auto_pack_length([3], 2048) == 8
    assert auto_pack_length([1000], 1000) == 1000
    assert auto_pack_length([900], 1000, multiple=256) == 1000
    with pytest.raises(ValueError):
        auto_pack_length([], 100)


def realistic_lengths(seed: int, n: int, median: float, spread: float, top: int) -> list[int]:
    rng = random.Random(seed)
    return [
        min(top, max(16, round(rng.lognormvariate(math.log(median), spread)))) for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("median", "spread", "top", "context"),
    [(149, 0.5, 387, 2048), (300, 0.9, 2048, 2048), (60, 0.7, 512, 512)],
)
def test_padding_under_two_percent_on_realistic_lengths(
    median: float, spread: float, top: int, context: int
) -> None:
    lengths = realistic_lengths(1, 2000, median, spread, top)
    pack_length = auto_pack_length(lengths, context)
    rows = pack(lengths, pack_length)
    assert padding_fraction(rows, lengths, pack_length) < 0.02
    # It is the shortest such row length: every shorter candidate pads more.
    for shorter in range(math.ceil(max(lengths) / 8) * 8, pack_length, 8):
        assert padding_fraction(pack(lengths, shorter), lengths, shorter) >= PADDING_TARGET
    # One example per row would waste far more.
    assert padding_fraction([[i] for i in range(len(lengths))], lengths, pack_length) > 0.3


def ex(ids: list[int], trained: list[bool]) -> TokenizedExample:
    return TokenizedExample(ids, trained)


def test_collate_layout_labels_and_positions() -> None:
    examples = [
        ex([11, 12, 13], [False, True, True]),
        ex([21, 22], [True, True]),
        ex([31, 32, 33, 34], [False, False, True, True]),
    ]
    batch = collate(examples, [[0, 1], [2]], 7, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 21, 22, 0, 0],
        [31, 32, 33, 34, 0, 0, 0],
    ]
    assert batch["labels"].tolist() == [
        [-100, 12, 13, -100, 22, -100, -100],
        [-100, -100, 33, 34, -100, -100, -100],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert batch["num_real_tokens"] == 9
    assert batch["num_trained_tokens"] == 5


def test_collate_padded_layout() -> None:
    examples = [ex([1, 2, 3], [False, True, True]), ex([4, 5], [True, True])]
    batch = collate_padded(examples, pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (batch["num_real_tokens"], batch["num_trained_tokens"]) == (5, 3)


def test_collate_rejects_overfull_row() -> None:
    with pytest.raises(ValueError, match="more than pack_length 4"):
        collate([ex([1, 2, 3], [True] * 3), ex([4, 5], [True] * 2)], [[0, 1]], 4, pad_id=0)


def conversations(n: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    words = ["the", "model", "reads", "a", "long", "report", "and", "answers", "every"]
    words += ["question", "with", "care"]
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
        for _ in range(1 + i % 3):
            user = " ".join(rng.choices(words, k=rng.randint(3, 25)))
            answer = " ".join(rng.choices(words, k=rng.randint(2, 40)))
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ]
        out.append({"messages": messages})
    return out


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


@torch.no_grad()
def test_packed_equals_unpacked_on_tiny_model() -> None:
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    model = load_model("ftmagic/tiny-random-chat").eval()
    examples = [render(tokenizer, c, "CHAT_COMPLETION") for c in conversations(10)]
    lengths = [len(e) for e in examples]
    pack_length = auto_pack_length(lengths, 2048)
    rows = pack(lengths, pack_length)
    assert any(len(row) > 1 for row in rows)
    batch = collate(examples, rows, pack_length, tokenizer.pad_token_id)
    packed = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    packed_loss = summed_loss(packed, batch["labels"])

    alone_loss = torch.zeros(())
    trained = 0
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            single = collate_padded([examples[i]], tokenizer.pad_token_id)
            logits = model(input_ids=single["input_ids"], use_cache=False).logits
            n = lengths[i]
            torch.testing.assert_close(packed[r, offset : offset + n], logits[0], atol=1e-5, rtol=0)
            alone_loss += summed_loss(logits, single["labels"])
            trained += single["num_trained_tokens"]
            offset += n
    assert (
        trained
        == batch["num_trained_tokens"]
        == sum(e.num_trained - e.trained[0] for e in examples)
    )
    assert batch["num_real_tokens"] == sum(lengths)
    assert abs(packed_loss / trained - alone_loss / trained) < 1e-5

    padded = collate_padded(examples, tokenizer.pad_token_id)
    padded_logits = model(
        input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False
    ).logits
    padded_loss = summed_loss(padded_logits, padded["labels"])
    assert padded["num_trained_tokens"] == trained
    assert abs(padded_loss / trained - alone_loss / trained) < 1e-5
