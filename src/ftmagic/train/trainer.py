"""The one trainer entry point: ``train(config, run_id)``. Every backend (the kernel thread, the
local process, torchrun's processes, Ray Train's workers) calls it.

It reads like a recipe, in phases: **load checkpoint** (when resuming), **setup** (data plan,
model, optimizer, schedule), **train** (the loop), **save checkpoint** (eval loss, eval-prompt
generations, weights and state, committed to MLflow) and **cleanup** (register, final status).
Everything a user or another process sees goes to MLflow through ``ftmagic.tracking.store``, from
rank 0 only.

Choices worth knowing:

- **Batches.** Examples are packed (best-fit decreasing) into rows of ``pack_length`` tokens whose
  ``position_ids`` restart at every example, so no example attends to another and padding stays
  near zero; with ``packing: false`` each example is its own padded row (the baseline). An epoch
  is every row once, in an order shuffled with the seed. A step takes rows until it holds about
  ``tokens_per_batch`` real tokens and splits them into micro-batches of ``micro_batch_tokens``.
- **Loss.** The sum of token cross-entropies over trained labels in a micro-batch, divided by the
  trained tokens of the *whole* step (every micro-batch on every rank), so the gradient does not
  depend on how the step is split. The trained-token count comes from the global data plan, which
  every rank holds, so it needs no communication. DDP and FSDP average gradients, hence the
  ``world_size`` factor.
- **Tokens.** ``train/tokens``, ``Ntok`` durations and ``tokens_per_batch`` all count real
  (non-pad) tokens the model was trained on, the same unit as the data's token counts.
- **LoRA.** Checkpoints hold the adapter only. At the end, with ``merge_lora`` (the default), the
  adapter is merged into the base weights (``merge_and_unload``) and a plain model is registered;
  otherwise the adapter is registered with a pointer to its base.
- **Divergence.** A NaN/inf loss or gradient, or a loss above 5x the recent median after warmup,
  fails the run *before* the optimizer applies the bad step, and no checkpoint is written from it:
  the last good checkpoint stays the latest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import Duration, RunConfig, check_register_to
from ftmagic.errors import FtmagicError, RunError
from ftmagic.models.loading import model_folder
from ftmagic.train.checkpoint import (
    CheckpointContents,
    TrainState,
    capture_rng,
    keyed_by_name,
    read_state,
    read_torch,
    restore_rng,
    write_checkpoint,
)

if TYPE_CHECKING:
    import torch

    from ftmagic.data.render import TokenizedExample
    from ftmagic.train.distributed import DistContext

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
CANCEL_POLL_SECONDS = 3.0
SPIKE_FACTOR = 5.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 1
SPIKE_MIN_RISE = 1.0  # nats: tiny late-training losses may double without anything wrong
IGNORE_INDEX = -100


# --- results and progress ------------------------------------------------------------------------


@dataclass
class TrainResult:
    """How a run ended: its status, why, and the numbers a summary shows."""

    run_id: str
    status: str
    reason: str | None = None
    steps: int = 0
    total_steps: int = 0
    tokens: int = 0
    final_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float = 0.0
    last_checkpoint_step: int | None = None
    registered_model: str | None = None


@dataclass(frozen=True)
class StepReport:
    """One finished optimizer step, as given to a ``progress`` hook (rank 0 only)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_s: float
    epoch: int


ProgressHook = Callable[[StepReport], None]


class TrainingDiverged(RunError):
    """The loss or gradient became NaN/inf or spiked: the step is not applied."""


# --- the data plan (pure) ------------------------------------------------------------------------


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


def trained_count(example: TokenizedExample) -> int:
    """Tokens of ``example`` that get a loss (its first token never does: nothing predicts it)."""
    return int(sum(bool(t) for t in example.trained[1:]))


def build_rows(lengths: Sequence[int], pack_length: int | None) -> list[list[int]]:
    """Packed bins of example indices, or one example per row when ``pack_length`` is None."""
    if pack_length is None:
        return [[i] for i in range(len(lengths))]
    from ftmagic.data.packing import pack

    return [list(row) for row in pack(list(lengths), pack_length)]


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The rows of ``epoch`` in their seeded order (a fresh shuffle per epoch)."""
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def group_steps(order: Sequence[int], row_tokens: Sequence[int], budget: int) -> list[list[int]]:
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
    """The step numbers (1-based) after which a checkpoint is written; the last step always is."""
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
    return group_steps(list(rows), {r: w for r, w in zip(rows, widths, strict=True)}, budget)  # type: ignore[arg-type]


def data_fingerprint(
    lengths: Sequence[int], row_trained: Sequence[int], config: RunConfig, pack_length: int | None
) -> str:
    """A short hash of what decides the batches, so a resume on changed data is refused."""
    key = json.dumps(
        [list(lengths), list(row_trained), pack_length, config.tokens_per_batch, config.seed]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_plan(examples: list[TokenizedExample], config: RunConfig, context_length: int) -> DataPlan:
    """Rows, steps and checkpoint marks for ``examples`` under ``config``."""
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


def resolve_pack_length(
    lengths: Sequence[int], config: RunConfig, context_length: int
) -> int | None:
    if not config.packing:
        return None
    if config.pack_length is not None:
        return max(config.pack_length, max(lengths, default=1))
    from ftmagic.data.packing import auto_pack_length

    return int(auto_pack_length(list(lengths), context_length))


def collate_rows(plan: DataPlan, rows: Sequence[int], pad_id: int) -> dict[str, Any]:
    """The tensors of one micro-batch: packed rows, or padded single-example rows."""
    from ftmagic.data.packing import collate, collate_padded

    if plan.pack_length is not None:
        return dict(collate(plan.examples, [plan.rows[r] for r in rows], plan.pack_length, pad_id))
    return dict(collate_padded([plan.examples[plan.rows[r][0]] for r in rows], pad_id))


# --- the loss (pure) -----------------------------------------------------------------------------


def loss_sum(model: Any, batch: dict[str, Any], chunk_tokens: int = 0) -> torch.Tensor:
    """Sum of the token cross-entropies over the trained labels of ``batch``.

    Computed from the logits (not the model's own mean loss) so that the caller decides the
    normaliser. ``use_cache=False`` makes transformers honour the example boundaries that the
    packed ``position_ids`` mark. With ``chunk_tokens`` the full-vocabulary logits of the whole
    micro-batch never exist: the output layer computes the loss that many positions at a time.
    """
    import torch.nn.functional as F

    from ftmagic.train.distributed import unwrap
    from ftmagic.train.loss import chunked_loss, supports_chunking

    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    for name in ("position_ids", "attention_mask"):
        if batch.get(name) is not None:
            inputs[name] = batch[name]
    if chunk_tokens and supports_chunking(unwrap(model)):
        with chunked_loss(unwrap(model), batch["labels"], chunk_tokens):
            return model(**inputs).logits  # type: ignore[no-any-return]
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def divergence_reason(
    loss: float,
    grad_norm: float,
    step: int,
    recent: Sequence[float],
    warmup: int,
    config: RunConfig,
) -> str | None:
    """Why step ``step`` must not be applied, with advice; None when it looks healthy."""
    lr = config.effective_learning_rate()
    advice = f"lower learning_rate (now {lr:g})"
    if config.max_grad_norm == 0:
        advice += " or set max_grad_norm (now 0, no clipping)"
    if not math.isfinite(loss):
        return f"loss became {_nonfinite(loss)} at step {step}: {advice}"
    if not math.isfinite(grad_norm):
        return f"gradient norm became {_nonfinite(grad_norm)} at step {step}: {advice}"
    if step > warmup and len(recent) >= SPIKE_MIN_HISTORY:
        median = statistics.median(recent)
        if loss > SPIKE_FACTOR * median and loss - median > SPIKE_MIN_RISE:
            return (
                f"loss spiked to {loss:.4g} at step {step}, over {SPIKE_FACTOR:g}x the recent "
                f"median {median:.4g}: {advice}, or raise warmup_steps"
            )
    return None


def _nonfinite(value: float) -> str:
    return "NaN" if math.isnan(value) else "inf"


# --- reporting to MLflow (rank 0 only) -----------------------------------------------------------


class Reporter:
    """The run's voice in MLflow: status, events, metrics, heartbeat, cancel polling.

    Only rank 0 talks to MLflow; on other ranks every method is a no-op, so the loop can call them
    unconditionally.
    """

    def __init__(self, run_id: str, *, enabled: bool) -> None:
        self.run_id = run_id
        self.enabled = enabled
        self._metrics: Any = None
        self._last_cancel_poll = time.monotonic()
        self._stop_beating = threading.Event()
        self.started = time.monotonic()
        self.estimated_seconds: float | None = None

    def start_heartbeat(self) -> None:
        """Beat from a daemon thread until ``close``: a slow model load, a long step or a busy
        machine must not make a live run look dead; a killed process stops beating at once."""
        if not self.enabled:
            return

        def beat() -> None:
            while not self._stop_beating.wait(HEARTBEAT_SECONDS):
                try:
                    self.store.heartbeat(self.run_id)
                except Exception as err:  # the next beat retries; training goes on
                    log.warning("heartbeat of run %s failed: %s", self.run_id, err)

        name = f"ftmagic-heartbeat-{self.run_id[:8]}"
        threading.Thread(target=beat, name=name, daemon=True).start()

    @property
    def store(self) -> Any:
        from ftmagic.tracking import store

        return store

    def status(self, status: str, reason: str | None = None) -> None:
        """Set the run's status; the store records it as an event too."""
        log.info("%s %s%s", self.run_id, status, f": {reason}" if reason else "")
        if self.enabled:
            self.store.set_status(self.run_id, status, reason)

    def event(self, kind: str, message: str, step: int | None = None) -> None:
        log.info("%s %s: %s", self.run_id, kind, message)
        if self.enabled:
            self.store.add_event(self.run_id, kind, message, step=step)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._metrics is None:
            self._metrics = self.store.MetricsLogger(self.run_id)
        self._metrics.log(step, values)

    def flush(self) -> None:
        if self._metrics is not None:
            self._metrics.flush()

    def total_steps(self, total: int) -> None:
        if self.enabled:
            self.store.set_tag(self.run_id, self.store.TOTAL_STEPS_TAG, total)

    def timing(self, estimated: float | None = None) -> None:
        """Tag the estimated seconds (at the start), or the seconds taken and the TIMING event
        "estimated X, took Y" (at the end)."""
        from ftmagic.data.estimate import ESTIMATED_TAG, TOOK_TAG, timing_message

        if estimated is not None:
            self.estimated_seconds = estimated
            if self.enabled:
                self.store.set_tag(self.run_id, ESTIMATED_TAG, f"{estimated:.1f}")
            return
        took = time.monotonic() - self.started
        if self.enabled:
            self.store.set_tag(self.run_id, TOOK_TAG, f"{took:.1f}")
        self.event("TIMING", timing_message(self.estimated_seconds, took))

    def cancel_requested(self, stop_event: threading.Event | None) -> bool:
        """The in-process stop event, or MLflow's cancel tag polled every few seconds."""
        if stop_event is not None and stop_event.is_set():
            return True
        now = time.monotonic()
        if not self.enabled or now - self._last_cancel_poll < CANCEL_POLL_SECONDS:
            return False
        self._last_cancel_poll = now
        return bool(self.store.cancel_requested(self.run_id))

    def close(self) -> None:
        self._stop_beating.set()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


# --- the session: everything the phases share ----------------------------------------------------


@dataclass
class Session:
    """The live objects of one training process, built by ``setup`` and used by every phase."""

    config: RunConfig
    run_id: str
    ctx: DistContext
    reporter: Reporter
    tokenizer: Any
    plan: DataPlan
    eval_plan: DataPlan | None
    model: Any
    optimizer: Any
    scheduler: Any
    autocast_dtype: Any
    scaler: Any
    warmup_steps: int
    state: TrainState = field(default_factory=TrainState)
    last_checkpoint_step: int | None = None
    eval_loss: float | None = None
    train_seconds: float = 0.0

    @property
    def inner(self) -> Any:
        """The model without its DDP wrapper (for saving and generating)."""
        from ftmagic.train.distributed import unwrap

        return unwrap(self.model)

    @property
    def total_steps(self) -> int:
        return len(self.plan.steps)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)


# --- phase 0: data -------------------------------------------------------------------------------


@dataclass
class PreparedData:
    tokenizer: Any
    context_length: int
    train: list[TokenizedExample]
    eval: list[TokenizedExample]


def prepare_data(config: RunConfig, reporter: Reporter) -> PreparedData:
    """Check the model name and register_to, validate and tokenize the data: all before any
    weights load, so bad input fails in seconds."""
    from ftmagic.catalog import resolve_model
    from ftmagic.data.dataset import effective_context_length, load_examples
    from ftmagic.models.loading import load_tokenizer

    entry = resolve_model(config.model)
    if config.register_to is not None:
        check_register_to(config.register_to)
    if config.validate_inputs:
        from ftmagic.data.validate import validate

        report = validate(config, calibrate=False)
        report.raise_if_failed()
        reporter.event("DATA_VALIDATED", _validation_message(report))
        if report.estimated_seconds is not None:
            reporter.timing(report.estimated_seconds)
    tokenizer = load_tokenizer(config.model)
    train_examples = load_examples(config, tokenizer, split="train", entry=entry)
    if not train_examples:
        raise RunError(f"train_data_path {config.train_data_path} holds no trainable examples")
    eval_examples = load_examples(config, tokenizer, split="eval", entry=entry)
    context_length = effective_context_length(config, entry)
    return PreparedData(tokenizer, context_length, train_examples, eval_examples)


def _validation_message(report: Any) -> str:
    stats = getattr(report, "stats", None)
    if stats is None:
        return "data is valid"
    fields = ("num_examples", "num_tokens", "num_trained_tokens")
    parts = [
        f"{name.removeprefix('num_')}={getattr(stats, name)}"
        for name in fields
        if hasattr(stats, name)
    ]
    return "data is valid: " + ", ".join(parts) if parts else "data is valid"


# --- phase 1: load checkpoint --------------------------------------------------------------------


def find_resume_checkpoint(run_id: str, ctx: DistContext) -> Path | None:
    """The run's last committed checkpoint, downloaded; None when it has none yet.

    Rank 0 alone picks and downloads it (two ranks downloading into one cache folder would race);
    the others wait, then read the same folder. A rank on another machine that cannot see that
    folder downloads the same step for itself.
    """
    from ftmagic.tracking import store
    from ftmagic.train.distributed import barrier, broadcast_object

    found: tuple[str, int] | None = None
    if ctx.is_main:
        checkpoints = store.list_checkpoints(run_id)
        if checkpoints:
            step = checkpoints[-1].step
            found = (str(store.download_checkpoint(run_id, step)), step)
    found = broadcast_object(found, ctx)
    barrier(ctx)
    if found is None:
        log.info("run %s has no checkpoint to resume from: starting from step 0", run_id)
        return None
    folder, step = Path(found[0]), found[1]
    if not folder.exists():
        folder = Path(store.download_checkpoint(run_id, step))
    return folder


# --- phase 2: setup ------------------------------------------------------------------------------


def load_weights(config: RunConfig, resume_from: Path | None) -> Any:
    """The model to train: the checkpoint's (resume, full), ``custom_weights_path`` or the base.

    A LoRA folder given as custom weights is merged into its base so training continues from the
    weights it describes.
    """
    from ftmagic.models.loading import load_model

    if resume_from is not None and config.method == "full":
        return load_model(str(model_folder(resume_from)))
    if config.load_in_4bit:
        from ftmagic.train.qlora import load_4bit

        if config.custom_weights_path:
            raise RunError(
                "load_in_4bit starts from the base model only. Fix: leave custom_weights_path "
                "empty, or set load_in_4bit: false"
            )
        return load_4bit(config.model, gradient_checkpointing=config.gradient_checkpointing)
    if config.custom_weights_path:
        from ftmagic.models.generation import load_for_inference
        from ftmagic.tracking import store

        folder = Path(store.resolve_weights(config.custom_weights_path))
        model, _ = load_for_inference(folder)
        return model
    return load_model(config.model)


def apply_lora(model: Any, config: RunConfig) -> Any:
    """Wrap ``model`` with LoRA adapters; only they train."""
    from peft import LoraConfig, get_peft_model

    targets: Any = config.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_adapter(model: Any, resume_from: Path) -> None:
    """Put a checkpoint's LoRA weights into a freshly wrapped model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(model_folder(resume_from) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RunError(f"checkpoint {resume_from} does not match the LoRA settings of this run")


def build_optimizer(model: Any, config: RunConfig, device: Any) -> Any:
    """AdamW over the trainable parameters: fused kernels where available, else foreach."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    lr, decay = config.effective_learning_rate(), config.weight_decay
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, foreach=True)


def build_scheduler(optimizer: Any, config: RunConfig, total_steps: int, warmup: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
    return get_scheduler(
        name[config.lr_schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )


def choose_autocast(config: RunConfig, ctx: DistContext) -> Any:
    """The autocast dtype: bf16 on GPUs that support it (``auto``), else none (fp32)."""
    import torch

    from ftmagic.train.distributed import use_bf16

    if use_bf16(config, ctx):
        return torch.bfloat16
    if config.precision == "fp16":
        if ctx.device.type != "cuda":
            raise RunError("precision fp16 needs a GPU. Fix: use precision auto or fp32 on CPU")
        return torch.float16
    return None


def setup(
    config: RunConfig,
    run_id: str,
    ctx: DistContext,
    reporter: Reporter,
    data: PreparedData,
    resume_from: Path | None,
) -> Session:
    """Build the data plan, the model (full or LoRA), the optimizer and the schedule; restore a
    checkpoint's states when resuming."""
    import torch

    from ftmagic.train import attention
    from ftmagic.train.distributed import wrap_model

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    plan = make_plan(data.train, config, data.context_length)
    eval_config = config.replace(training_duration="1ep", seed=config.seed)
    eval_plan = make_plan(data.eval, eval_config, data.context_length) if data.eval else None
    attn = attention.resolve(
        config.attn_implementation, device_type=ctx.device.type, packing=config.packing
    )
    attention.check(attn, device_type=ctx.device.type)
    if config.load_in_4bit:
        from ftmagic.train import qlora

        qlora.check(device_type=ctx.device.type)
    model = load_weights(config, resume_from)
    attention.apply(model, attn, chosen_by_auto=config.attn_implementation == "auto")
    model.config.use_cache = False
    if config.task_type == "CHAT_COMPLETION":
        fix_stop_tokens(model, data.tokenizer, reporter)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        model = apply_lora(model, config)
        if resume_from is not None:
            load_adapter(model, resume_from)
    if not config.load_in_4bit:  # a 4-bit model is placed on its GPU as it loads
        model.to(ctx.device)
    model.train()
    reporter.event("MODEL_INITIALIZED", _model_message(model, config, plan))
    wrapped = wrap_model(model, ctx, config)
    optimizer = build_optimizer(wrapped, config, ctx.device)
    total = len(plan.steps)
    warmup = config.resolved_warmup_steps(total)
    autocast_dtype = choose_autocast(config, ctx)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    session = Session(
        config=config,
        run_id=run_id,
        ctx=ctx,
        reporter=reporter,
        tokenizer=data.tokenizer,
        plan=plan,
        eval_plan=eval_plan,
        model=wrapped,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, total, warmup),
        autocast_dtype=autocast_dtype,
        scaler=scaler,
        warmup_steps=warmup,
        state=TrainState(order_seed=config.seed, data_fingerprint=plan.fingerprint),
    )
    if resume_from is not None:
        restore_training_state(session, resume_from)
    return session


def fix_stop_tokens(model: Any, tokenizer: Any, reporter: Reporter) -> None:
    """Generation must stop on the token the chat template ends assistant turns with; when the
    model's generation config (saved with every checkpoint) lacks it, it is added."""
    from ftmagic.data.templates import add_stop_token

    message = add_stop_token(model, tokenizer)
    if message:
        reporter.event("GENERATION_CONFIG", message)


def _model_message(model: Any, config: RunConfig, plan: DataPlan) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = "padded rows" if plan.pack_length is None else f"packed rows of {plan.pack_length}"
    return (
        f"{config.model} ({config.method}): {trainable:,} of {total:,} parameters train; "
        f"{len(plan.examples)} examples in {len(plan.rows)} {rows}"
    )


def record_reproducibility(session: Session) -> None:
    """Log the resolved config, the data's fingerprint, package versions and the seed, so that
    ``ftmagic.rerun`` can start an identical run and say what changed since."""
    from ftmagic.reproduce import record

    if not session.ctx.is_main:
        return
    config, plan = session.config, session.plan
    resolved = {
        "learning_rate": config.effective_learning_rate(),
        "warmup_steps": session.warmup_steps,
        "total_steps": session.total_steps,
        "pack_length": plan.pack_length,
        "micro_batches_per_step": config.micro_batches_per_step(),
        "plan_fingerprint": plan.fingerprint,
    }
    record(session.run_id, config, resolved)


def restore_training_state(session: Session, folder: Path) -> None:
    """Optimizer, schedule, RNG and data position from checkpoint ``folder``."""
    from ftmagic.train.distributed import load_optimizer_state

    state = read_state(folder)
    if state.data_fingerprint != session.plan.fingerprint:
        raise RunError(
            f"cannot resume from {folder}: the training data or the batch settings changed since "
            "the checkpoint was written. Fix: resume with the same data and config, or start a new "
            "run with custom_weights_path pointing at this run"
        )
    optimizer_state = read_torch(folder, "optimizer.pt")
    if keyed_by_name(optimizer_state):
        load_optimizer_state(session.model, session.optimizer, optimizer_state, session.ctx)
    else:  # format 1: positional, written by a single process or DDP
        session.optimizer.load_state_dict(optimizer_state)
    session.scheduler.load_state_dict(read_torch(folder, "scheduler.pt"))
    restore_rng(read_torch(folder, "rng.pt"))
    session.state = state
    session.last_checkpoint_step = state.step


# --- phase 3: train ------------------------------------------------------------------------------


@contextlib.contextmanager
def autocast(session: Session) -> Iterator[None]:
    import torch

    if session.autocast_dtype is None:
        yield
        return
    with torch.autocast(session.ctx.device.type, dtype=session.autocast_dtype):
        yield


def rank_micro_batches(session: Session, step: PlannedStep) -> list[tuple[list[int], float]]:
    """This rank's micro-batches for ``step`` with their loss weights.

    Every rank runs the same number of forward/backward passes (FSDP and DDP need it): ranks with
    fewer rows repeat a row with weight 0, which adds nothing to the gradient.
    """
    ctx = session.ctx
    plan = session.plan
    budget = session.config.micro_batch_tokens

    def split(rows: Sequence[int]) -> list[list[int]]:
        return micro_batches(rows, [plan.row_width(r) for r in rows], budget) if rows else []

    shares = [list(step.rows[r :: ctx.world_size]) for r in range(ctx.world_size)]
    counts = [len(split(share)) for share in shares]
    mine = [(mb, 1.0) for mb in split(shares[ctx.rank])]
    filler = [step.rows[0]]
    mine += [(filler, 0.0)] * (max(counts) - len(mine))
    return mine


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def run_step(session: Session, step: PlannedStep) -> tuple[float, float]:
    """Forward/backward over the step's micro-batches and clip; returns ``(loss, grad_norm)``.

    The optimizer is *not* stepped here, so a diverged step can be refused.
    """
    import torch

    from ftmagic.train.distributed import all_reduce_sum, gradient_sync

    ctx = session.ctx
    parts = rank_micro_batches(session, step)
    scale = ctx.world_size / max(1, step.trained_tokens)
    total = torch.zeros((), device=ctx.device)
    for index, (rows, weight) in enumerate(parts):
        batch = to_device(collate_rows(session.plan, rows, session.pad_id), ctx.device)
        with gradient_sync(session.model, enabled=index == len(parts) - 1):
            with autocast(session):
                summed = loss_sum(session.model, batch, session.config.loss_chunk_tokens)
            scaled = summed * (weight * scale)
            (session.scaler.scale(scaled) if session.scaler else scaled).backward()
        total += summed.detach() * weight
    loss = float(all_reduce_sum(total, ctx).item()) / max(1, step.trained_tokens)
    if session.scaler is not None:
        session.scaler.unscale_(session.optimizer)
    limit = session.config.max_grad_norm or float("inf")
    params = [p for p in session.model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    return loss, grad_norm


def apply_step(session: Session) -> None:
    if session.scaler is not None:
        session.scaler.step(session.optimizer)
        session.scaler.update()
    else:
        session.optimizer.step()
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)


def stop_requested(session: Session, stop_event: threading.Event | None) -> bool:
    """A stop asked of any rank, agreed by all ranks at the same step."""
    from ftmagic.train.distributed import any_rank

    return any_rank(session.reporter.cancel_requested(stop_event), session.ctx)


def train_loop(
    session: Session, stop_event: threading.Event | None, progress: ProgressHook | None
) -> bool:
    """Run the remaining steps, checkpointing on schedule. Returns True when stopped on request."""
    state = session.state
    while state.step < session.total_steps:
        planned = session.plan.steps[state.step]
        started = time.perf_counter()
        lr = float(session.scheduler.get_last_lr()[0])
        loss, grad_norm = run_step(session, planned)
        number = state.step + 1
        reason = divergence_reason(
            loss, grad_norm, number, state.recent_losses, session.warmup_steps, session.config
        )
        if reason is not None:
            session.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(reason)
        apply_step(session)
        elapsed = time.perf_counter() - started
        session.train_seconds += elapsed
        record_step(session, planned, loss)
        report = StepReport(
            step=number,
            total_steps=session.total_steps,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens=state.tokens,
            tokens_per_s=planned.tokens / elapsed if elapsed > 0 else 0.0,
            epoch=planned.epoch,
        )
        log_step(session, report)
        if progress is not None and session.ctx.is_main:
            progress(report)
        stopping = stop_requested(session, stop_event)
        if number in session.plan.checkpoint_after or stopping:
            save_checkpoint(session)
        if stopping:
            return True
    return False


def record_step(session: Session, planned: PlannedStep, loss: float) -> None:
    state = session.state
    state.step += 1
    state.tokens += planned.tokens
    state.trained_tokens += planned.trained_tokens
    state.last_loss = loss
    state.recent_losses = [*state.recent_losses, loss][-SPIKE_WINDOW:]


def log_step(session: Session, report: StepReport) -> None:
    session.reporter.metrics(
        report.step,
        {
            "train/loss": report.loss,
            "train/lr": report.lr,
            "train/grad_norm": report.grad_norm,
            "train/tokens": float(report.tokens),
            "train/tokens_per_s": report.tokens_per_s,
        },
    )


# --- phase 4: save checkpoint --------------------------------------------------------------------


def evaluate(session: Session) -> float | None:
    """Token-weighted mean loss over the eval data (every rank takes its share of the rows)."""
    import torch

    from ftmagic.train.distributed import all_reduce_sum, shard

    plan = session.eval_plan
    if plan is None:
        return None
    rows = list(range(len(plan.rows)))
    mine = shard(rows, session.ctx)
    widths = [plan.row_width(r) for r in mine]
    totals = torch.zeros(2, device=session.ctx.device)
    session.model.eval()
    try:
        with torch.no_grad():
            for mb in (
                micro_batches(mine, widths, session.config.micro_batch_tokens) if mine else []
            ):
                batch = to_device(collate_rows(plan, mb, session.pad_id), session.ctx.device)
                with autocast(session):
                    chunk = session.config.loss_chunk_tokens
                    totals[0] += loss_sum(session.inner, batch, chunk).float()
                totals[1] += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    finally:
        session.model.train()
    summed = all_reduce_sum(totals, session.ctx)
    return float(summed[0] / summed[1]) if summed[1] > 0 else None


def save_checkpoint(session: Session) -> None:
    """Eval loss, eval-prompt generations, then the checkpoint written locally and committed.

    The RNG is captured after eval and generation, so a resumed run continues the very stream the
    uninterrupted run does. Every rank joins the state-dict gather; rank 0 writes and commits.
    """
    from ftmagic.train.distributed import barrier, full_optimizer_state, full_state_dict, is_sharded

    state = session.state
    if session.last_checkpoint_step == state.step:
        return
    reporter = session.reporter
    session.eval_loss = evaluate(session)
    if session.eval_loss is not None:
        reporter.metrics(state.step, {"eval/loss": session.eval_loss})
    # A sharded model's forward is a collective: every rank generates, rank 0 logs.
    if session.config.eval_prompts and (session.ctx.is_main or is_sharded(session.inner)):
        log_generations(session)
    if session.config.eval_metric:
        score_checkpoint(session)
    model_state = full_state_dict(session.model, session.ctx)
    optimizer_state = full_optimizer_state(session.model, session.optimizer, session.ctx)
    if session.ctx.is_main:
        assert optimizer_state is not None
        contents = CheckpointContents(
            model=session.inner,
            tokenizer=session.tokenizer,
            model_state=model_state,
            optimizer_state=optimizer_state,
            scheduler_state=session.scheduler.state_dict(),
            rng_state=capture_rng(),
            state=state,
            config_yaml=session.config.to_yaml(),
        )
        commit_checkpoint(session, contents)
    barrier(session.ctx)
    session.last_checkpoint_step = state.step


def log_generations(session: Session) -> None:
    from ftmagic.data.formats import eval_prompt_inputs
    from ftmagic.models.generation import generate_all

    config = session.config
    with autocast(session):
        rows = generate_all(
            session.inner,
            session.tokenizer,
            eval_prompt_inputs(config),
            max_new_tokens=config.max_new_tokens,
            chat=config.task_type == "CHAT_COMPLETION",
        )
    if session.ctx.is_main:
        session.reporter.store.log_generations(session.run_id, session.state.step, rows)


def score_checkpoint(session: Session) -> None:
    """The run's eval_metric on greedy generations for a sample of the eval data. Every rank
    generates (a sharded model's forward is a collective); rank 0 logs. A metric that raises is
    reported as an event and the run goes on."""
    from ftmagic.metrics import score

    step = session.state.step
    try:
        with autocast(session):
            result = score(session.inner, session.tokenizer, session.config)
    except Exception as err:  # the user's own function: keep training, say what went wrong
        log.exception("eval_metric failed at step %s", step)
        message = f"eval_metric {session.config.eval_metric} failed: {type(err).__name__}: {err}"
        session.reporter.event("EVAL_METRIC_FAILED", message, step=step)
        return
    if result is not None and session.ctx.is_main:
        session.reporter.metrics(step, {result.key: result.value})
        session.reporter.store.log_scored_generations(session.run_id, step, result.rows)


def commit_checkpoint(session: Session, contents: CheckpointContents) -> None:
    """Write the checkpoint where the store wants it, then commit it (the ``COMPLETE`` marker is
    written last). With a local artifact store that folder *is* the artifact folder, so the
    weights are written once; a staging folder for a remote store is removed after the upload."""
    store = session.reporter.store
    step = session.state.step
    folder = write_checkpoint(checkpoint_folder(session.run_id, step), contents)
    session.reporter.flush()
    meta: dict[str, Any] = {"tokens": session.state.tokens, "loss": session.state.last_loss}
    if session.eval_loss is not None:
        meta["eval_loss"] = session.eval_loss
    store.commit_checkpoint(session.run_id, folder, step, meta)
    if store.local_artifact_dir(store.client(), session.run_id) is None:
        shutil.rmtree(folder, ignore_errors=True)
    loss_text = f", eval loss {session.eval_loss:.4f}" if session.eval_loss is not None else ""
    session.reporter.event("CHECKPOINT_SAVED", f"checkpoint of step {step}{loss_text}", step=step)


def checkpoint_folder(run_id: str, step: int) -> Path:
    """The store's folder for checkpoint ``step``, as a readable error when it cannot be made."""
    from ftmagic.tracking import store

    try:
        return Path(store.checkpoint_dir(run_id, step))
    except OSError as err:
        where = err.filename or f"the folder of checkpoint {step}"
        raise RunError(
            f"cannot write checkpoint folder {where}: {err.strerror or err}. Fix: make it "
            "writable or free some space; earlier checkpoints are intact"
        ) from None


# --- phase 5: cleanup ----------------------------------------------------------------------------


def register(session: Session) -> str | None:
    """Register the final model (merged LoRA or adapter with its base, per ``merge_lora``)."""
    config = session.config
    if not config.register_to or not session.ctx.is_main:
        return None
    store = session.reporter.store
    model = session.inner
    if config.method == "lora" and config.merge_lora:
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="ftmagic-register-") as tmp:
        model.save_pretrained(tmp)
        session.tokenizer.save_pretrained(tmp)
        name = store.register_model(
            session.run_id, Path(tmp), config.register_to, run_name(session)
        )
    return str(name)


def run_name(session: Session) -> str:
    return str(session.reporter.store.client().get_run(session.run_id).info.run_name)


def result_of(session: Session, status: str, reason: str | None = None) -> TrainResult:
    return TrainResult(
        run_id=session.run_id,
        status=status,
        reason=reason,
        steps=session.state.step,
        total_steps=session.total_steps,
        tokens=session.state.tokens,
        final_loss=session.state.last_loss,
        eval_loss=session.eval_loss,
        tokens_per_s=session.state.tokens / session.train_seconds if session.train_seconds else 0.0,
        last_checkpoint_step=session.last_checkpoint_step,
    )


# --- the entry point -----------------------------------------------------------------------------


def train(
    config: RunConfig,
    run_id: str,
    *,
    stop_event: threading.Event | None = None,
    resume: bool = False,
    progress: ProgressHook | None = None,
) -> TrainResult:
    """Train ``config`` as MLflow run ``run_id`` (made by ``store.create_run``) and return how it
    ended. Never raises for a failed run: the failure is in the result and in MLflow (FAILED with a
    readable reason; unexpected errors keep their traceback in the log).

    ``stop_event`` (or a cancel requested in MLflow) stops after the current step with a final
    checkpoint (STOPPED). ``resume`` continues from the run's last committed checkpoint exactly.
    ``progress`` is called on rank 0 after every step.
    """
    from ftmagic import quiet
    from ftmagic.train.distributed import setup as setup_distributed
    from ftmagic.train.distributed import teardown

    if config.verbose:
        quiet.set_verbose(True)
    quiet.apply(load=("transformers", "mlflow"))
    ctx = setup_distributed(config)
    reporter = Reporter(run_id, enabled=ctx.is_main)
    session: Session | None = None
    try:
        reporter.status("RUNNING")
        reporter.start_heartbeat()
        resume_from = find_resume_checkpoint(run_id, ctx) if resume else None
        data = prepare_data(config, reporter)
        session = setup(config, run_id, ctx, reporter, data, resume_from)
        record_reproducibility(session)
        return run_session(session, stop_event, progress)
    except FtmagicError as err:
        return fail(run_id, reporter, session, str(err))
    except Exception as err:
        log.exception("run %s failed", run_id)
        return fail(run_id, reporter, session, f"{type(err).__name__}: {err}")
    finally:
        reporter.close()
        teardown(ctx)


def run_session(
    session: Session, stop_event: threading.Event | None, progress: ProgressHook | None
) -> TrainResult:
    """Train, write the final checkpoint, register, and mark the run COMPLETED or STOPPED."""
    reporter = session.reporter
    start = session.state.step
    where = f"resumed after step {start}" if start else "from step 0"
    reporter.total_steps(session.total_steps)
    reporter.event(
        "TRAIN_STARTED",
        f"{session.total_steps} steps ({session.config.training_duration}), {where}",
        step=start,
    )
    stopped = train_loop(session, stop_event, progress)
    if stopped:
        reason = f"stopped on request after step {session.state.step}"
        reporter.status("STOPPED", reason)
        return result_of(session, "STOPPED", reason)
    save_checkpoint(session)
    reporter.event("TRAIN_FINISHED", f"{session.state.step} steps, {session.state.tokens} tokens")
    result = result_of(session, "COMPLETED")
    result.registered_model = register(session)
    reporter.flush()
    reporter.timing()
    registered = f", registered as {result.registered_model}" if result.registered_model else ""
    final = (
        f"final loss {session.state.last_loss:.4f}"
        if session.state.last_loss is not None
        else "done"
    )
    reporter.status("COMPLETED", final + registered)
    return result


def fail(run_id: str, reporter: Reporter, session: Session | None, reason: str) -> TrainResult:
    """Record a failure in MLflow (best effort: a broken store must not hide the first error)."""
    try:
        reporter.flush()
        reporter.status("FAILED", reason)
    except Exception:
        log.exception("could not record the failure of run %s", run_id)
    if session is not None:
        return result_of(session, "FAILED", reason)
    return TrainResult(run_id=run_id, status="FAILED", reason=reason)
