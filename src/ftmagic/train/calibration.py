"""Calibrating the time estimate: load the model as the trainer does and time a few real
optimizer steps, a forward pass, greedy decoding and a checkpoint save on the trainer's device.

``ftmagic.data.estimate`` plans the run and turns a calibration into seconds per phase; it caches
calibrations but cannot make one, since that takes the trainer's own builders and loss. The public
``ftmagic.validate`` and ``ftmagic validate`` pass ``measure`` to it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.data.estimate import Calibration, calibration_key

if TYPE_CHECKING:
    from ftmagic.config import RunConfig
    from ftmagic.data.estimate import Plan

WARMUP_STEPS = 1
TIMED_STEPS = 2
DECODE_TOKENS = 8


def measure(config: RunConfig, plan: Plan) -> Calibration:
    """Load the model as the trainer does and time a few real steps on the trainer's device."""
    import torch

    from ftmagic.models.loading import load_model, load_tokenizer
    from ftmagic.train.builders import apply_lora, build_optimizer

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    start = time.perf_counter()
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        model = apply_lora(model, config)
    model.to(device)
    model.train()
    _sync(device)
    load_seconds = time.perf_counter() - start
    try:
        batch = _batch(tokenizer, plan, device)
        optimizer = build_optimizer(model, config, device)
        dtype = _autocast_dtype(config, device)
        micro, step = _time_steps(model, optimizer, batch, device, dtype)
        forward = _time_forward(model, batch, device, dtype)
        decode = _time_decode(model, batch, device, dtype)
        save = _time_save(model, optimizer, device)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows, width = plan.shape
    return Calibration(
        key=calibration_key(config, plan),
        rows=rows,
        width=width,
        micro_seconds=micro,
        optimizer_seconds=step,
        forward_seconds=forward,
        decode_seconds=decode,
        load_seconds=load_seconds,
        save_seconds=save,
    )


def _batch(tokenizer: Any, plan: Plan, device: Any) -> dict[str, Any]:
    import torch

    from ftmagic.data.packing import collate
    from ftmagic.data.render import TokenizedExample

    generator = torch.Generator().manual_seed(0)
    vocab = max(2, min(len(tokenizer), 32_000))
    rows, width = plan.shape
    examples = [
        TokenizedExample(
            torch.randint(1, vocab, (width,), generator=generator).tolist(), [True] * width
        )
        for _ in range(rows)
    ]
    batch = collate(examples, [[i] for i in range(rows)], width, pad_id=0)
    return {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}


def _time_steps(
    model: Any, optimizer: Any, batch: dict[str, Any], device: Any, dtype: Any
) -> tuple[float, float]:
    import torch

    from ftmagic.train.loss import loss_sum

    micro_times, step_times = [], []
    for number in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_sum(model, batch) / max(1, int((batch["labels"] != -100).sum()))
        loss.backward()
        _sync(device)
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if number >= WARMUP_STEPS:
            micro_times.append(middle - start)
            step_times.append(time.perf_counter() - middle)
    return statistics.median(micro_times), statistics.median(step_times)


def _time_forward(model: Any, batch: dict[str, Any], device: Any, dtype: Any) -> float:
    import torch

    from ftmagic.train.loss import loss_sum

    times = []
    model.eval()
    with torch.no_grad():
        for _ in range(2):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss_sum(model, batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    model.train()
    return min(times)


def _time_decode(model: Any, batch: dict[str, Any], device: Any, dtype: Any) -> float:
    """Seconds per generated token (greedy, with the KV cache), as eval prompts generate."""
    import torch

    prompt = batch["input_ids"][:1, :16]
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            start = time.perf_counter()
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=DECODE_TOKENS,
                min_new_tokens=DECODE_TOKENS,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            _sync(device)
            return (time.perf_counter() - start) / DECODE_TOKENS
    finally:
        model.train()


def _time_save(model: Any, optimizer: Any, device: Any) -> float:
    """Writing the weights (safetensors) and the optimizer state, as a checkpoint does."""
    import torch

    with tempfile.TemporaryDirectory(prefix="ftmagic-calibrate-") as tmp:
        start = time.perf_counter()
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
        _sync(device)
        return time.perf_counter() - start


def _autocast_dtype(config: RunConfig, device: Any) -> Any:
    import torch

    if device.type != "cuda":
        return None
    if config.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if config.precision == "fp16" else None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
