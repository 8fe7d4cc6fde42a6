"""Per-kernel caches: base weights (equal but independent copies) and validation reports of
unchanged data (a changed file is validated again)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ftmagic.config import RunConfig
from ftmagic.data import validate as validation
from ftmagic.models import loading


def test_cached_weights_are_equal_but_independent() -> None:
    loading.clear_weights_cache()
    first = loading.load_model("ftmagic/tiny-random-chat")
    second = loading.load_model("ftmagic/tiny-random-chat")
    assert len(loading._weights_cache) == 1
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # training one run leaves the next run's base alone
    third = loading.load_model("ftmagic/tiny-random-chat")
    assert torch.equal(next(third.parameters()), next(second.parameters()))
    assert not torch.equal(next(third.parameters()), next(first.parameters()))


def test_validation_of_unchanged_data_is_cached(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    messages = [{"role": "user", "content": "Aspirin?"}, {"role": "assistant", "content": "[]"}]
    row = json.dumps({"messages": messages})
    data.write_text((row + "\n") * 6, encoding="utf-8")
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=str(data))
    validation.clear_validation_cache()
    first = validation.validate(config)
    assert first.num_examples == 6 and len(validation._validation_cache) == 1
    again = validation.validate(config)
    assert (
        again is not first and again.num_examples == 6 and again.total_tokens == first.total_tokens
    )
    again.warnings.append("changed by the caller")
    assert "changed by the caller" not in validation.validate(config).warnings
    data.write_text((row + "\n") * 9, encoding="utf-8")
    os.utime(data, ns=(1, 1))  # a new mtime even on a coarse clock
    assert validation.validate(config).num_examples == 9
    assert len(validation._validation_cache) == 2
    assert (
        validation.validation_key(RunConfig(train_data_path="s3://bucket/x.jsonl"), 20, True)
        is None
    )
