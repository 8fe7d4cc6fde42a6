"""The training loop: each planned step's forward and backward passes, the divergence check, the
optimizer step, metrics and progress, and the checkpoints on the plan's marks.

- **Loss.** The sum of token cross-entropies over trained labels in a micro-batch, divided by the
  trained tokens of the *whole* step (every micro-batch on every rank), so the gradient does not
  depend on how the step is split. The trained-token count comes from the global data plan, which
  every rank holds, so it needs no communication. DDP and FSDP average gradients, hence the
  ``world_size`` factor.
- **Divergence.** A NaN/inf loss or gradient, or a loss above 5x the recent median after warmup,
  fails the run *before* the optimizer applies the bad step, and no checkpoint is written from it:
  the last good checkpoint stays the latest.
- **Checkpoints.** Eval loss, eval-prompt generations and the eval metric, then the weights and
  the training state, written where the reporter says and committed through it.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmagic.data.plan import PlannedStep, collate_rows, micro_batches
from ftmagic.errors import RunError
from ftmagic.train.checkpoint import CheckpointContents, capture_rng, write_checkpoint
from ftmagic.train.session import autocast, to_device

if TYPE_CHECKING:
    from ftmagic.config import RunConfig
    from ftmagic.train.session import Session

SPIKE_FACTOR = 5.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 1
SPIKE_MIN_RISE = 1.0  # nats: tiny late-training losses may double without anything wrong


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


# --- one step ------------------------------------------------------------------------------------


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


def run_step(session: Session, step: PlannedStep) -> tuple[float, float]:
    """Forward/backward over the step's micro-batches and clip; returns ``(loss, grad_norm)``.

    The optimizer is *not* stepped here, so a diverged step can be refused.
    """
    import torch

    from ftmagic.train.distributed import all_reduce_sum, gradient_sync
    from ftmagic.train.loss import loss_sum

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


def divergence_reason(
    loss: float,
    grad_norm: float,
    step: int,
    recent: Sequence[float],
    warmup: int,
    config: RunConfig,
) -> str | None:
    """Why step ``step`` must not be applied, with advice; None when it looks healthy.

    >>> from ftmagic.config import RunConfig
    >>> config = RunConfig(learning_rate=0.01)
    >>> divergence_reason(2.0, 1.0, 5, [2.1, 2.0], 1, config) is None
    True
    >>> divergence_reason(float("nan"), 1.0, 5, [2.1], 1, config)
    'loss became NaN at step 5: lower learning_rate (now 0.01)'
    >>> divergence_reason(12.0, 1.0, 5, [2.0, 2.2], 1, config)
    'loss spiked to 12 at step 5, over 5x the recent median 2.1: lower learning_rate (now 0.01), or raise warmup_steps'
    >>> divergence_reason(12.0, 1.0, 1, [2.0], 1, config) is None  # still warming up
    True
    """  # noqa: E501
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


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(session: Session) -> None:
    """Eval loss, eval-prompt generations, then the checkpoint written locally and committed.

    The RNG is captured after eval and generation, so a resumed run continues the very stream the
    uninterrupted run does. Every rank joins the state-dict gather; rank 0 writes and commits.
    """
    from ftmagic.train.distributed import barrier, full_optimizer_state, full_state_dict, is_sharded
    from ftmagic.train.evaluation import evaluate, log_generations, score_checkpoint

    state = session.state
    if session.last_checkpoint_step == state.step:
        return
    session.eval_loss = evaluate(session)
    if session.eval_loss is not None:
        session.reporter.metrics(state.step, {"eval/loss": session.eval_loss})
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


def commit_checkpoint(session: Session, contents: CheckpointContents) -> None:
    """Write the checkpoint where the reporter wants it, then commit it through the reporter."""
    reporter = session.reporter
    step = session.state.step
    folder = write_checkpoint(reporter.checkpoint_folder(step), contents)
    meta: dict[str, Any] = {"tokens": session.state.tokens, "loss": session.state.last_loss}
    if session.eval_loss is not None:
        meta["eval_loss"] = session.eval_loss
    reporter.commit_checkpoint(folder, step, meta)
    loss_text = f", eval loss {session.eval_loss:.4f}" if session.eval_loss is not None else ""
    reporter.event("CHECKPOINT_SAVED", f"checkpoint of step {step}{loss_text}", step=step)
