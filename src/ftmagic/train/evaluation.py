"""What a checkpoint is judged by: the eval loss, the eval prompts' generations and the
``eval_metric``. Each runs on every rank (a sharded model's forward is a collective); rank 0
logs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ftmagic.config import TaskType
from ftmagic.data.packing import IGNORE_INDEX
from ftmagic.data.plan import collate_rows, micro_batches
from ftmagic.train.session import autocast, to_device

if TYPE_CHECKING:
    from ftmagic.train.session import Session

log = logging.getLogger(__name__)


def evaluate(session: Session) -> float | None:
    """Token-weighted mean loss over the eval data (every rank takes its share of the rows)."""
    import torch

    from ftmagic.train.distributed import all_reduce_sum, shard
    from ftmagic.train.loss import loss_sum

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


def log_generations(session: Session) -> None:
    """Greedy generations for the eval prompts."""
    from ftmagic.data.formats import eval_prompt_inputs
    from ftmagic.models.generation import generate_all

    config = session.config
    with autocast(session):
        rows = generate_all(
            session.inner,
            session.tokenizer,
            eval_prompt_inputs(config),
            max_new_tokens=config.max_new_tokens,
            chat=config.task_type == TaskType.CHAT_COMPLETION,
        )
    if session.ctx.is_main:
        session.reporter.generations(session.state.step, rows)


def score_checkpoint(session: Session) -> None:
    """The run's eval_metric on greedy generations for a sample of the eval data. A metric that
    raises is reported as an event and the run goes on."""
    from ftmagic.train.scoring import score

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
        session.reporter.scored_generations(step, result.rows)
