"""LoRA adapters as starting points: ``custom_weights_path`` at an adapter trains every weight of
the merged model (``method: full``) or continues the adapter itself (``method: lora``); an adapter
saved only as ``adapter_model.bin`` is refused wherever ftmagic loads one."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import fixtures_train
from fixtures_train import event_types, fast_config, losses_of
from ftmagic.config import RunConfig
from ftmagic.errors import ModelError
from ftmagic.models.generation import load_for_inference
from ftmagic.train.trainer import StepReport, train

train_env = fixtures_train.train_env

ADAPTER = "adapter_model.safetensors"


def new_run(config: RunConfig) -> str:
    from ftmagic.tracking import store

    return str(store.create_run(config, backend="inkernel"))


def lora_config(env: dict[str, Any], **changes: Any) -> RunConfig:
    settings = {
        "method": "lora",
        "lora_rank": 8,
        "lora_target_modules": ["all-linear"],
        "lora_dropout": 0.0,
        "learning_rate": 1e-2,
    }
    return fast_config(env, **{**settings, **changes})


def first_step_loss(model: Any, config: RunConfig) -> float:
    """The loss ``model`` has on the first step that ``config`` plans (before any update)."""
    from ftmagic.catalog import resolve_model
    from ftmagic.data.dataset import effective_context_length, load_examples
    from ftmagic.data.plan import collate_rows, make_plan
    from ftmagic.models.loading import load_tokenizer
    from ftmagic.train.loss import loss_sum

    tokenizer = load_tokenizer(config.model)
    examples = load_examples(config, tokenizer, split="train")
    context = effective_context_length(config, resolve_model(config.model))
    plan = make_plan(examples, config, context)
    step = plan.steps[0]
    model.eval()
    with torch.no_grad():
        pad = tokenizer.pad_token_id
        batch = collate_rows(plan, step.rows, pad if pad is not None else tokenizer.eos_token_id)
        summed = loss_sum(model, batch)
    return float(summed) / step.trained_tokens


@pytest.fixture(scope="module")
def adapter_run(train_env: dict[str, Any]) -> dict[str, Any]:
    """A finished LoRA run whose checkpoints hold its adapter only."""
    from ftmagic.tracking import store

    config = lora_config(train_env, training_duration="12ba")
    run_id = new_run(config)
    result = train(config, run_id)
    assert result.status == "COMPLETED", result.reason
    folder = store.download_checkpoint(run_id)
    assert (folder / ADAPTER).exists() and not (folder / "model.safetensors").exists()
    losses = losses_of(run_id)
    assert losses[12] < losses[1] - 0.3
    return {"run_id": run_id, "folder": folder, "losses": losses}


def bin_only_copy(folder: Path, target: Path) -> Path:
    """``folder`` with its adapter saved as ``adapter_model.bin`` instead of safetensors."""
    shutil.copytree(folder, target)
    convert_to_bin(target)
    return target


def convert_to_bin(folder: Path) -> None:
    torch.save(load_file(str(folder / ADAPTER)), folder / "adapter_model.bin")
    (folder / ADAPTER).unlink()


def assert_refused(message: str, folder: Path) -> None:
    assert f"LoRA adapter {folder} holds only adapter_model.bin" in message, message
    assert "save_pretrained(folder, safe_serialization=True)" in message, message


# --- custom_weights_path at an adapter -------------------------------------------------------


@pytest.mark.timeout(400)
def test_full_method_merges_the_adapter_and_trains_every_weight(
    train_env: dict[str, Any], adapter_run: dict[str, Any]
) -> None:
    from ftmagic.models.loading import load_model
    from ftmagic.tracking import store

    config = fast_config(
        train_env, custom_weights_path=f"runs:/{adapter_run['run_id']}", training_duration="2ba"
    )
    result = train(config, new_run(config))
    assert result.status == "COMPLETED", result.reason
    merged, _ = load_for_inference(adapter_run["folder"])
    first = losses_of(result.run_id)[1]
    assert first == pytest.approx(first_step_loss(merged, config), rel=1e-4)
    assert first < first_step_loss(load_model(config.model), config) - 0.1
    folder = store.download_checkpoint(result.run_id)
    assert (folder / "model.safetensors").exists() and not (folder / ADAPTER).exists()
    tuned = load_model(str(folder)).state_dict()
    start = merged.state_dict()
    moved = {k: float((tuned[k] - start[k]).abs().max()) for k in start}
    assert all(change > 0 for change in moved.values()), [k for k, v in moved.items() if v == 0]
    assert moved["model.embed_tokens.weight"] > 1e-3  # no adapter there: only full training


@pytest.mark.timeout(400)
def test_lora_method_continues_the_adapter(
    train_env: dict[str, Any], adapter_run: dict[str, Any]
) -> None:
    from ftmagic.tracking import store

    config = lora_config(
        train_env,
        custom_weights_path=f"runs:/{adapter_run['run_id']}",
        training_duration="2ba",
        learning_rate=1e-3,
    )
    result = train(config, new_run(config))
    assert result.status == "COMPLETED", result.reason
    merged, _ = load_for_inference(adapter_run["folder"])
    assert losses_of(result.run_id)[1] == pytest.approx(first_step_loss(merged, config), rel=1e-4)
    before = load_file(str(adapter_run["folder"] / ADAPTER))
    after = load_file(str(store.download_checkpoint(result.run_id) / ADAPTER))
    assert sorted(after) == sorted(before)
    for name, start in before.items():
        assert after[name].shape == start.shape
        similarity = torch.nn.functional.cosine_similarity(
            after[name].flatten(), start.flatten(), dim=0
        )
        assert similarity > 0.95, name  # a fresh adapter's random lora_A would be ~0
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert "MODEL_INITIALIZED" in event_types(result.run_id)
    message = next(
        json.loads(v)["message"]
        for k, v in sorted(store.client().get_run(result.run_id).data.tags.items())
        if k.startswith("ftmagic.event.") and json.loads(v)["type"] == "MODEL_INITIALIZED"
    )
    assert f"the adapter of runs:/{adapter_run['run_id']} (r=8, alpha=32)" in message


# --- safetensors only -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_inference_refuses_a_bin_only_adapter(adapter_run: dict[str, Any], tmp_path: Path) -> None:
    folder = bin_only_copy(adapter_run["folder"], tmp_path / "adapter")
    with pytest.raises(ModelError) as raised:
        load_for_inference(folder)
    assert_refused(str(raised.value), folder)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_custom_weights_refuse_a_bin_only_adapter(
    train_env: dict[str, Any], adapter_run: dict[str, Any], tmp_path: Path, method: str
) -> None:
    folder = bin_only_copy(adapter_run["folder"], tmp_path / "adapter")
    config = lora_config(train_env, method=method, custom_weights_path=str(folder))
    run_id = new_run(config)
    result = train(config, run_id)
    assert result.status == "FAILED"
    assert_refused(str(result.reason), folder)
    assert "TRAIN_STARTED" not in event_types(run_id)


@pytest.mark.timeout(400)
def test_resume_refuses_a_bin_only_adapter(train_env: dict[str, Any]) -> None:
    from ftmagic.tracking import store

    config = lora_config(train_env, training_duration="6ba")
    run_id = new_run(config)
    stop = threading.Event()

    def stop_at_two(report: StepReport) -> None:
        if report.step == 2:
            stop.set()

    stopped = train(config, run_id, stop_event=stop, progress=stop_at_two)
    assert stopped.status == "STOPPED", stopped.reason
    folder = store.download_checkpoint(run_id)
    convert_to_bin(folder)
    result = train(config, run_id, resume=True)
    assert result.status == "FAILED"
    assert_refused(str(result.reason), folder)
    assert [c.step for c in store.list_checkpoints(run_id)] == [2]


@pytest.mark.timeout(120)
def test_registration_refuses_a_bin_only_adapter(
    adapter_run: dict[str, Any], tmp_path: Path
) -> None:
    from ftmagic.errors import FtmagicError
    from ftmagic.tracking.registry import register_model, run_model_versions

    folder = bin_only_copy(adapter_run["folder"], tmp_path / "adapter")
    with pytest.raises(FtmagicError) as raised:
        register_model(adapter_run["run_id"], folder, "main.default", "bin-adapter-run")
    assert_refused(str(raised.value), folder)
    assert run_model_versions(adapter_run["run_id"]) == []
