"""GPU-only options on a machine without CUDA: the run fails before any weights load, saying
what it needs and how to go on without it."""

from __future__ import annotations

from typing import Any

import pytest

import fixtures_train
from fixtures_train import fast_config
from ftmagic.config import RunConfig
from ftmagic.errors import ConfigError, RunError
from ftmagic.train import qlora
from ftmagic.train.trainer import train

train_env = fixtures_train.train_env


def _new_run(config: RunConfig) -> str:
    from ftmagic.tracking import store

    return str(store.create_run(config, backend="inkernel"))


def test_qlora_without_cuda_says_what_is_needed(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, method="lora", load_in_4bit=True)
    result = train(config, _new_run(config))
    assert result.status == "FAILED"
    assert "load_in_4bit (QLoRA) needs a CUDA GPU" in str(result.reason)
    assert "set load_in_4bit: false" in str(result.reason)
    assert fixtures_train.status_of(result.run_id) == "FAILED"
    with pytest.raises(RunError, match=r"needs a CUDA GPU"):
        qlora.check(device_type="cpu")


def test_qlora_needs_lora() -> None:
    with pytest.raises(ConfigError, match=r"load_in_4bit.*needs method lora"):
        RunConfig(model="ftmagic/tiny-random-chat", load_in_4bit=True)


def test_flash_attention_on_a_cpu_run_fails_with_the_fix(train_env: dict[str, Any]) -> None:
    config = fast_config(train_env, attn_implementation="flash_attention_2")
    result = train(config, _new_run(config))
    assert result.status == "FAILED"
    assert "flash_attention_2 needs a CUDA GPU. Fix: use attn_implementation auto" in str(
        result.reason
    )
