"""The memory estimate: its counts match the real models, its parts move the way the settings
move them, its advice really fits, and it is within 25% of a measured CPU training step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from ftmagic.config import RunConfig
from ftmagic.models.memory import GIB, MemorySetup, ModelShape, estimate, setup_for

BENCH = Path(__file__).parents[1] / "benchmarks" / "memory_bench.py"
LLAMA_1B = ModelShape(
    hidden=2048,
    layers=16,
    heads=32,
    kv_heads=8,
    head_dim=64,
    intermediate=8192,
    vocab=128256,
    tied=True,
    dtype_bytes=2,
)


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("memory_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_bench"] = module
    spec.loader.exec_module(module)
    return module


def _llama_config(tied: bool) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_transformers_and_peft(tied: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    config = _llama_config(tied)
    shape = ModelShape.from_hf_config(config)
    model = LlamaForCausalLM(config)
    assert shape.parameters == model.num_parameters()
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert shape.lora_parameters(8) == trainable


def test_llama_1b_full_fine_tuning_in_bf16() -> None:
    result = estimate(LLAMA_1B, MemorySetup(micro_batch_tokens=4096, compute_bytes=2))
    assert LLAMA_1B.parameters == 1_235_814_400
    assert result.weights == 2 * LLAMA_1B.parameters
    assert result.optimizer == 4 * LLAMA_1B.parameters  # two bf16 moments
    # 4096 positions x 128256 logits: bf16 logits, fp32 copy, log-softmax, gradient.
    assert result.logits == 4096 * 128256 * 14
    assert 10 * GIB < result.peak < 40 * GIB


def test_each_setting_moves_its_own_part() -> None:
    base = MemorySetup(micro_batch_tokens=4096, compute_bytes=2)
    plain = estimate(LLAMA_1B, base)
    checkpointed = estimate(
        LLAMA_1B, MemorySetup(**{**base.__dict__, "gradient_checkpointing": True})
    )
    chunked = estimate(LLAMA_1B, MemorySetup(**{**base.__dict__, "loss_chunk_tokens": 512}))
    lora = estimate(LLAMA_1B, MemorySetup(**{**base.__dict__, "method": "lora"}))
    qlora = estimate(LLAMA_1B, MemorySetup(**{**base.__dict__, "method": "qlora"}))
    fsdp = estimate(LLAMA_1B, MemorySetup(**{**base.__dict__, "devices": 4, "sharded": True}))

    assert checkpointed.activations_used < plain.activations_used / 5
    assert checkpointed.activations == plain.activations  # both are reported
    assert chunked.logits == 512 * 128256 * 16 and chunked.logits < plain.logits / 5
    assert lora.optimizer < plain.optimizer / 50 and lora.weights == plain.weights
    assert qlora.weights < lora.weights / 2  # the (tied) embeddings stay bf16
    assert fsdp.optimizer == plain.optimizer // 4
    # A quarter, plus the unsharded copies of two decoder layers and of the root (embeddings).
    unsharded = 2 * (2 * LLAMA_1B.layer_parameters + LLAMA_1B.root_parameters)
    assert fsdp.weights == plain.weights // 4 + unsharded
    assert fsdp.peak < plain.peak


def test_advice_when_it_does_not_fit_really_fits() -> None:
    setup = MemorySetup(micro_batch_tokens=8192, row_tokens=8192, compute_bytes=2)
    device = 16 * GIB
    result = estimate(LLAMA_1B, setup, device="NVIDIA L4-like", device_bytes=device)
    assert result.fits is False
    assert result.suggestions
    assert "does NOT fit NVIDIA L4-like (16.0 GiB)" in result.summary()
    assert any("To fit: " in line for line in result.lines())
    changes = {
        "gradient_checkpointing: true": {"gradient_checkpointing": True},
        "loss_chunk_tokens: 1024": {"loss_chunk_tokens": 1024},
        "method: lora": {"method": "lora"},
        "method: qlora (needs a CUDA GPU)": {"method": "qlora"},
        "2 GPUs with data_parallel: fsdp2": {"devices": 2, "sharded": True},
        "4 GPUs with data_parallel: fsdp2": {"devices": 4, "sharded": True},
        "8 GPUs with data_parallel: fsdp2": {"devices": 8, "sharded": True},
    }
    for suggestion in result.suggestions:
        if suggestion.startswith("micro_batch_tokens: "):
            change: dict[str, Any] = {"micro_batch_tokens": int(suggestion.split(": ")[1])}
        else:
            change = changes[suggestion]
        fixed = estimate(LLAMA_1B, MemorySetup(**{**setup.__dict__, **change}), device_bytes=device)
        assert fixed.fits is True, suggestion
    small = estimate(
        LLAMA_1B, MemorySetup(method="qlora", micro_batch_tokens=512), device_bytes=device
    )
    assert small.fits is True and small.suggestions == []


def test_run_config_maps_to_the_setup() -> None:
    config = RunConfig(
        model="ftmagic/tiny-random-chat",
        backend="torchrun",
        num_processes=4,
        micro_batch_tokens=1024,
        tokens_per_batch=4096,
        loss_chunk_tokens=256,
        gradient_checkpointing=True,
    )
    on_gpu = setup_for(config, 2048, cuda=True)
    assert (on_gpu.devices, on_gpu.sharded, on_gpu.compute_bytes) == (4, True, 2)
    assert on_gpu.micro_batch_tokens == 2048  # a row is never split
    assert on_gpu.varlen_attention and on_gpu.micro_batches_per_step == 4
    on_cpu = setup_for(config, 512, cuda=False)
    assert (on_cpu.sharded, on_cpu.compute_bytes, on_cpu.varlen_attention) == (False, 4, False)
    assert setup_for(config.replace(data_parallel="fsdp2"), 512, cuda=False).sharded


def test_estimate_for_a_catalog_model_reads_its_config_only() -> None:
    from ftmagic.models.loading import load_model
    from ftmagic.models.memory import estimate_for_run

    result = estimate_for_run(RunConfig(model="ftmagic/tiny-random-chat"), 512)
    assert result.device_bytes and result.fits is True
    assert result.weights == 4 * load_model("ftmagic/tiny-random-chat").num_parameters()  # fp32
    assert result.summary().startswith("Estimated peak memory: ")
    assert result.to_dict()["peak"] == result.peak


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_estimate_is_within_a_quarter_of_a_measured_cpu_step() -> None:
    bench = _bench()
    spec = {
        "mode": "run",
        "vocab": 32000,
        "hidden": 256,
        "layers": 4,
        "tokens": 1024,
        "method": "full",
        "checkpointing": False,
        "chunk": 0,
    }
    measured = bench.run_isolated(spec)["peak_bytes"]
    estimated = bench.estimated_bytes(spec)
    assert measured > 100 * 2**20
    assert 0.75 < estimated / measured < 1.25, (estimated, measured)


def test_validation_report_shows_the_memory_estimate(tmp_path: Path) -> None:
    from importlib import resources

    from ftmagic.data.validate import validate

    source = Path(str(resources.files("ftmagic.resources") / "ner" / "train.jsonl"))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(source.read_text().splitlines()[:40]) + "\n")
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=str(data), packing=False)
    report = validate(config)
    assert report.ok, report.errors
    assert report.memory is not None and report.memory.setup.method == "full"
    # Unpacked rows are as wide as the longest example, which sizes the attention mask.
    edges = report.length_histogram.edges
    assert edges[0] < report.memory.setup.row_tokens <= edges[-1]
    assert any(line.startswith("Estimated peak memory: ") for line in report.summary_lines())
    assert report.to_dict()["memory"]["peak"] == report.memory.peak > 0
