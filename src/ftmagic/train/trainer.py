"""The one trainer entry point: ``train(config, run_id)``. Every backend (the kernel thread, the
local process, torchrun's processes, Ray Train's workers) calls it.

``train`` is the recipe; it reads as the phases in order:

1. **load checkpoint** (when resuming): the run's last committed checkpoint;
2. **prepare data**: check the inputs, tokenize (before any weights load, so bad input fails fast);
3. **setup**: the data plan (``ftmagic.data.plan``), the model, LoRA, optimizer and schedule
   (``builders``), a resumed run's states;
4. **train**: the loop (``loop``), checkpoints on the plan's marks;
5. **save checkpoint**: the final one (eval in ``evaluation``, files in ``checkpoint``);
6. **cleanup**: register the model, set the final status.

Everything a user or another process sees goes through the ``Reporter`` (``reporter``; MLflow for
every backend), from rank 0 only.

- **Batches and tokens.** See ``ftmagic.data.plan``: packed rows, seeded epochs, steps of about
  ``tokens_per_batch`` real tokens. ``train/tokens``, ``Ntok`` durations and ``tokens_per_batch``
  all count real (non-pad) tokens, the same unit as the data's token counts.
- **LoRA.** Checkpoints hold the adapter only. At the end, with ``merge_lora`` (the default), the
  adapter is merged into the base weights (``merge_and_unload``) and a plain model is registered;
  otherwise the adapter is registered with a pointer to its base.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import RunConfig, TaskType, check_register_to
from ftmagic.data.plan import DataPlan, make_plan
from ftmagic.errors import FtmagicError, RunError
from ftmagic.tracking.state import RunStatus
from ftmagic.train.builders import (
    apply_lora,
    build_optimizer,
    build_scheduler,
    choose_autocast,
    is_lora,
    load_adapter,
    load_weights,
    lora_settings,
)
from ftmagic.train.checkpoint import TrainState, keyed_by_name, read_state, read_torch, restore_rng
from ftmagic.train.loop import ProgressHook, StepReport, save_checkpoint, train_loop
from ftmagic.train.reporter import MlflowReporter, Reporter
from ftmagic.train.session import Session

if TYPE_CHECKING:
    from ftmagic.data.render import TokenizedExample
    from ftmagic.train.distributed import DistContext

__all__ = ["StepReport", "TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a run ended: its status, why, and the numbers a summary shows."""

    run_id: str
    status: RunStatus
    reason: str | None = None
    steps: int = 0
    total_steps: int = 0
    tokens: int = 0
    final_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float = 0.0
    last_checkpoint_step: int | None = None
    registered_model: str | None = None


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
    from ftmagic.train.distributed import setup as setup_distributed
    from ftmagic.train.distributed import teardown

    quiet_logs(config)
    ctx = setup_distributed(config)
    reporter = MlflowReporter(run_id, enabled=ctx.is_main)
    session: Session | None = None
    try:
        reporter.status(RunStatus.RUNNING)
        reporter.start_heartbeat()
        resume_from = find_resume_checkpoint(run_id, ctx) if resume else None
        data = prepare_data(config, reporter)
        session = setup(config, run_id, ctx, reporter, data, resume_from)
        record_reproducibility(session)
        announce_start(session)
        if train_loop(session, stop_event, progress):
            return stopped(session)
        save_checkpoint(session)
        return finish(session)
    except FtmagicError as err:
        return fail(run_id, reporter, session, str(err))
    except Exception as err:
        log.exception("run %s failed", run_id)
        return fail(run_id, reporter, session, f"{type(err).__name__}: {err}")
    finally:
        reporter.close()
        teardown(ctx)


def quiet_logs(config: RunConfig) -> None:
    from ftmagic import quiet

    if config.verbose:
        quiet.set_verbose(True)
    quiet.apply(load=("transformers", "mlflow"))


# --- 1. load checkpoint --------------------------------------------------------------------------


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


# --- 2. prepare data -----------------------------------------------------------------------------


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

        report = validate(config)
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


# --- 3. setup ------------------------------------------------------------------------------------


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

    from ftmagic.train.distributed import wrap_model

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    plan = make_plan(data.train, config, data.context_length)
    eval_config = config.replace(training_duration="1ep", seed=config.seed)
    eval_plan = make_plan(data.eval, eval_config, data.context_length) if data.eval else None
    model = build_model(config, ctx, reporter, data.tokenizer, resume_from)
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


def build_model(
    config: RunConfig,
    ctx: DistContext,
    reporter: Reporter,
    tokenizer: Any,
    resume_from: Path | None,
) -> Any:
    """The model ready to train on this process's device: its attention, stop tokens, gradient
    checkpointing and LoRA adapter (with a resumed run's adapter weights)."""
    from ftmagic.data.templates import add_stop_token
    from ftmagic.train import attention

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
    if config.task_type == TaskType.CHAT_COMPLETION:
        message = add_stop_token(model, tokenizer)
        if message:
            reporter.event("GENERATION_CONFIG", message)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        if not is_lora(model):
            model = apply_lora(model, config)
        if resume_from is not None:
            load_adapter(model, resume_from)
    if not config.load_in_4bit:  # a 4-bit model is placed on its GPU as it loads
        model.to(ctx.device)
    model.train()
    return model


def _model_message(model: Any, config: RunConfig, plan: DataPlan) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = "padded rows" if plan.pack_length is None else f"packed rows of {plan.pack_length}"
    method = config.method
    if is_lora(model) and config.custom_weights_path:
        method += f", the adapter of {config.custom_weights_path} ({lora_settings(model)})"
    return (
        f"{config.model} ({method}): {trainable:,} of {total:,} parameters train; "
        f"{len(plan.examples)} examples in {len(plan.rows)} {rows}"
    )


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


def record_reproducibility(session: Session) -> None:
    """Log the resolved config, the data's fingerprint, package versions and the seed, so that
    ``ftmagic.rerun`` can start an identical run and say what changed since."""
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
    session.reporter.reproducibility(config, resolved)


# --- 4. train ------------------------------------------------------------------------------------


def announce_start(session: Session) -> None:
    start = session.state.step
    where = f"resumed after step {start}" if start else "from step 0"
    session.reporter.total_steps(session.total_steps)
    session.reporter.event(
        "TRAIN_STARTED",
        f"{session.total_steps} steps ({session.config.training_duration}), {where}",
        step=start,
    )


def stopped(session: Session) -> TrainResult:
    """A run stopped on request (its checkpoint of the last step is written)."""
    reason = f"stopped on request after step {session.state.step}"
    session.reporter.status(RunStatus.STOPPED, reason)
    return result_of(session, RunStatus.STOPPED, reason)


# --- 6. cleanup ----------------------------------------------------------------------------------


def finish(session: Session) -> TrainResult:
    """Register the model and mark the run COMPLETED."""
    reporter = session.reporter
    state = session.state
    reporter.event("TRAIN_FINISHED", f"{state.step} steps, {state.tokens} tokens")
    result = result_of(session, RunStatus.COMPLETED)
    result.registered_model = register(session)
    reporter.flush()
    reporter.timing()
    registered = f", registered as {result.registered_model}" if result.registered_model else ""
    final = f"final loss {state.last_loss:.4f}" if state.last_loss is not None else "done"
    reporter.status(RunStatus.COMPLETED, final + registered)
    return result


def register(session: Session) -> str | None:
    """Register the final model (merged LoRA or adapter with its base, per ``merge_lora``)."""
    config = session.config
    if not config.register_to or not session.ctx.is_main:
        return None
    model = session.inner
    if config.method == "lora" and config.merge_lora:
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="ftmagic-register-") as tmp:
        model.save_pretrained(tmp)
        session.tokenizer.save_pretrained(tmp)
        return session.reporter.register(Path(tmp), config.register_to)


def result_of(session: Session, status: RunStatus, reason: str | None = None) -> TrainResult:
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


def fail(run_id: str, reporter: Reporter, session: Session | None, reason: str) -> TrainResult:
    """Record a failure (best effort: a broken store must not hide the first error)."""
    try:
        reporter.flush()
        reporter.status(RunStatus.FAILED, reason)
    except Exception:
        log.exception("could not record the failure of run %s", run_id)
    if session is not None:
        return result_of(session, RunStatus.FAILED, reason)
    return TrainResult(run_id=run_id, status=RunStatus.FAILED, reason=reason)
