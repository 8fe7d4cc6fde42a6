"""The live objects of one training process, shared by the loop, evaluation and the recipe."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftmagic.train.checkpoint import TrainState

if TYPE_CHECKING:
    from ftmagic.config import RunConfig
    from ftmagic.data.plan import DataPlan
    from ftmagic.train.distributed import DistContext
    from ftmagic.train.reporter import Reporter


@dataclass
class Session:
    """Everything a step, an evaluation or a checkpoint needs, built once by the recipe's setup."""

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


@contextlib.contextmanager
def autocast(session: Session) -> Iterator[None]:
    """The session's mixed precision (none in fp32)."""
    import torch

    if session.autocast_dtype is None:
        yield
        return
    with torch.autocast(session.ctx.device.type, dtype=session.autocast_dtype):
        yield


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
