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
    from collections.abc import Callable

    from ftmagic.config import RunConfig

    Measure = Callable[[RunConfig, "Plan"], "Calibration"]

CALIBRATION_VERSION = 1
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
    measure: Measure | None = None,
) -> Estimate:
    """Steps and seconds of ``config`` on examples of these token ``lengths`` (already truncated
    to ``context_length``). ``prepare_seconds`` is what preparing the data costs the trainer.

    ``measure`` times the model when no calibration is cached (the trainer's
    ``ftmagic.train.calibration.measure``); without it only a cached calibration is used, and
    without one the time is None.
    """
    plan = plan_run(config, lengths, eval_lengths, context_length)
    calibration = (
        cached_calibration(config, plan)
        if measure is None
        else calibrate_model(config, plan, measure)
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


def calibrate_model(config: RunConfig, plan: Plan, measure: Measure) -> Calibration:
    """The cached calibration, or a new one measured now by ``measure`` (and cached)."""
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
