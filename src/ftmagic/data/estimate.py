"""How many steps a run takes and how long, from the trainer's own plan and measured speeds.

Steps come from the trainer's data plan (the same packing, step grouping and checkpoint marks of
``ftmagic.data.plan``) applied to the validated example lengths, so the estimate counts the steps
the run will take, not full rows.

Time is the sum of the run's phases, each from a measurement on this machine's device:

- **startup**: loading the model and tokenizer, plus preparing the data (validation and the
  tokenization the trainer does), measured by the caller;
- **training**: a few real optimizer steps of the model on a micro-batch of the plan's row shape
  (after one warm-up step), scaled to the plan's micro-batches by their token count;
- **evaluation**: eval loss (forward passes) and eval-prompt generation at every checkpoint;
- **checkpoints** and **registration**: saving the weights and optimizer state, timed once.

A calibration is cached per model and device under ``$FTMAGIC_CACHE/estimates``, keyed by what
changes the speed (method, row shape, precision, gradient checkpointing).

This module reaches up into ``ftmagic.train`` lazily, and only to time the training step: it must
be the trainer's own, or the estimate drifts from what runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.data.plan import (
    build_rows,
    checkpoint_steps,
    micro_batches,
    plan_steps,
    resolve_pack_length,
)
from ftmagic.errors import FtmagicError

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

CALIBRATION_VERSION = 1
WARMUP_STEPS = 1
TIMED_STEPS = 2
DECODE_TOKENS = 8
# Bookkeeping the measurements leave out: MLflow run status, events and tags (sqlite), thread
# start-up and shutdown; and per checkpoint the commit (artifact metadata, tags).
RUN_OVERHEAD_SECONDS = 0.15
ESTIMATED_TAG = "ftmagic.estimated_seconds"
TOOK_TAG = "ftmagic.took_seconds"
CHECKPOINT_OVERHEAD_SECONDS = 0.05


@dataclass
class Calibration:
    """Speeds measured for one model, device and row shape."""

    key: str
    rows: int
    width: int
    micro_seconds: float
    optimizer_seconds: float
    forward_seconds: float
    decode_seconds: float
    load_seconds: float
    save_seconds: float
    measured_at: float = field(default_factory=time.time)

    def train_seconds(self, tokens: float) -> float:
        """Forward and backward over ``tokens`` batch tokens (padding included)."""
        return self.micro_seconds * tokens / (self.rows * self.width)

    def eval_seconds(self, tokens: float) -> float:
        return self.forward_seconds * tokens / (self.rows * self.width)


@dataclass
class Estimate:
    """Planned optimizer steps and the run's seconds, in total and by phase."""

    steps: int
    seconds: float | None
    parts: dict[str, float] = field(default_factory=dict)
    calibration: Calibration | None = None


@dataclass
class Plan:
    """What the estimate needs of the trainer's plan."""

    steps: int
    checkpoints: int
    train_batch_tokens: float
    eval_batch_tokens: float
    rows_per_micro: int
    width: int
    context_length: int
    budget: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """The micro-batch shape to calibrate: the row width and the rows of the plan's fullest
        micro-batch, each rounded up to a power of two (so one calibration serves data of similar
        lengths, and a tiny data set is not timed on a batch larger than its whole run), the
        rows within the micro-batch budget."""
        width = min(_power_of_two(max(64, self.width)), max(self.context_length, self.width))
        rows = _power_of_two(max(1, self.rows_per_micro * self.width // width))
        limit = max(1, (self.budget or rows * width) // width)
        return min(rows, limit), width


def estimate_run(
    config: RunConfig,
    lengths: Sequence[int],
    eval_lengths: Sequence[int],
    context_length: int,
    *,
    prepare_seconds: float = 0.0,
    calibrate: bool = True,
) -> Estimate:
    """Steps and seconds of ``config`` on examples of these token ``lengths`` (already truncated
    to ``context_length``). ``prepare_seconds`` is what preparing the data costs the trainer.

    With ``calibrate=False`` only a cached calibration is used; without one the time is None.
    """
    plan = plan_run(config, lengths, eval_lengths, context_length)
    calibration = (
        cached_calibration(config, plan) if not calibrate else calibrate_model(config, plan)
    )
    if calibration is None:
        return Estimate(plan.steps, None)
    parts = phase_seconds(config, plan, calibration, prepare_seconds)
    return Estimate(plan.steps, sum(parts.values()), parts, calibration)


def plan_run(
    config: RunConfig, lengths: Sequence[int], eval_lengths: Sequence[int], context_length: int
) -> Plan:
    """The trainer's plan for these lengths: steps, checkpoints and batch tokens (with padding)."""
    if not lengths:
        raise FtmagicError("no examples to plan a run for")
    pack_length = resolve_pack_length(lengths, config, context_length)
    rows = build_rows(lengths, pack_length)
    row_tokens = [sum(lengths[i] for i in row) for row in rows]
    widths = [pack_length or lengths[row[0]] for row in rows]
    steps = plan_steps(
        row_tokens, [0] * len(rows), config.duration, config.tokens_per_batch, config.seed
    )
    budget = config.micro_batch_tokens
    batch_tokens = 0.0
    most_rows = 1
    for step in steps:
        for micro in micro_batches(step.rows, [widths[r] for r in step.rows], budget):
            batch_tokens += len(micro) * max(widths[r] for r in micro)
            most_rows = max(most_rows, len(micro))
    eval_tokens = 0.0
    if eval_lengths:
        eval_pack = resolve_pack_length(eval_lengths, config, context_length)
        eval_rows = build_rows(eval_lengths, eval_pack)
        eval_tokens = float(
            sum(eval_pack or max(eval_lengths[i] for i in row) for row in eval_rows)
        )
    width = pack_length or max(lengths)
    return Plan(
        steps=len(steps),
        checkpoints=len(checkpoint_steps(steps, config.checkpoint_every)),
        train_batch_tokens=batch_tokens,
        eval_batch_tokens=eval_tokens,
        rows_per_micro=max(1, min(most_rows, budget // width)),
        width=width,
        context_length=context_length,
        budget=budget,
    )


def phase_seconds(
    config: RunConfig, plan: Plan, calibration: Calibration, prepare_seconds: float
) -> dict[str, float]:
    """Seconds of each phase: startup, training, evaluation, checkpoints, registration."""
    workers = config.num_processes if config.backend in ("torchrun", "ray") else 1
    training = calibration.train_seconds(plan.train_batch_tokens) / workers
    training += plan.steps * calibration.optimizer_seconds
    evaluation = plan.checkpoints * calibration.eval_seconds(plan.eval_batch_tokens) / workers
    tokens = len(config.eval_prompts) * config.max_new_tokens
    evaluation += plan.checkpoints * tokens * calibration.decode_seconds
    checkpoints = plan.checkpoints * (calibration.save_seconds + CHECKPOINT_OVERHEAD_SECONDS)
    # Registration saves the model once more and copies it into the registry.
    registration = 2 * calibration.save_seconds if config.register_to else 0.0
    startup = calibration.load_seconds + prepare_seconds + RUN_OVERHEAD_SECONDS
    return {
        "startup": startup,
        "training": training,
        "evaluation": evaluation,
        "checkpoints": checkpoints,
        "registration": registration,
    }


# --- calibration -----------------------------------------------------------------------------
def calibration_key(config: RunConfig, plan: Plan) -> str:
    parts = [
        config.method,
        f"r{config.lora_rank}" if config.method == "lora" else "",
        config.precision,
        "gc" if config.gradient_checkpointing else "",
        "{}x{}".format(*plan.shape),
        f"v{CALIBRATION_VERSION}",
    ]
    return "-".join(p for p in parts if p)


def cache_file(model: str, device: str) -> Path:
    """``$FTMAGIC_CACHE/estimates/<model>--<device>.json``."""
    root = Path(os.environ.get("FTMAGIC_CACHE") or Path.home() / ".cache" / "ftmagic")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-60:]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return root / "estimates" / f"{slug}-{digest}--{_slug(device)}.json"


def device_name() -> str:
    """The device the trainer picks here, named: ``cpu`` or the GPU's model."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def cached_calibration(config: RunConfig, plan: Plan) -> Calibration | None:
    entries = _read_cache(cache_file(config.model, device_name()))
    found = entries.get(calibration_key(config, plan))
    try:
        return Calibration(**found) if found else None
    except TypeError:
        return None


def calibrate_model(config: RunConfig, plan: Plan) -> Calibration:
    """The cached calibration, or a new one measured now (and cached)."""
    found = cached_calibration(config, plan)
    if found is not None:
        return found
    calibration = measure(config, plan)
    path = cache_file(config.model, device_name())
    entries = _read_cache(path)
    entries[calibration.key] = asdict(calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(path)
    return calibration


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


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _power_of_two(n: int) -> int:
    """The smallest power of two at least ``n``."""
    return 1 << max(0, (n - 1).bit_length())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "device"


def timing_message(estimated: float | None, took: float) -> str:
    """``estimated 40 s, took 52 s`` (the run's TIMING event)."""
    if estimated is None:
        return f"took {duration_text(took)} (no estimate: validate the run first to calibrate)"
    return f"estimated {duration_text(estimated)}, took {duration_text(took)}"


def duration_text(seconds: float) -> str:
    """``12 s``, ``4 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
