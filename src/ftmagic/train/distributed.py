"""torch.distributed for the trainer: one process, torchrun's processes or Ray Train's workers.

The trainer is written once, for any number of processes. This module hides where the processes
came from and how the model is wrapped:

- ``setup`` reuses a process group that already exists (Ray Train makes one), makes one from
  torchrun's environment (``WORLD_SIZE > 1``), or returns a single-process context.
- ``wrap_model`` leaves a single process alone, uses DDP over gloo on CPUs and FSDP2
  (``fully_shard`` per decoder layer, then the root) on GPUs; ``data_parallel`` overrides the
  choice (FSDP2 runs on CPUs with gloo too).
- Checkpoints are *full* state dicts on CPU, gathered to rank 0 with
  ``torch.distributed.checkpoint``'s state-dict API: the weights, and the optimizer state keyed by
  parameter name (not by position), so a run saved by N processes resumes on M processes (or in the
  kernel) with each parameter's own Adam moments, resharded for the new world.

DDP and FSDP2 both *average* gradients over ranks. To get the gradient of
``sum(token losses) / global_trained_tokens``, each rank backpropagates
``world_size * local_sum / global_trained_tokens``, with ``global_trained_tokens`` from
``all_reduce_sum``. Every rank must run the same number of forward/backward passes per step,
otherwise the gradient all-reduce waits forever: size micro-batches from global numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# A hung peer (killed worker, lost node) should fail the run, not block it for the NCCL default.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and its device.

    ``owns_group`` is true when ``setup`` created the process group (so ``teardown`` destroys it);
    a group made by Ray Train is left to Ray.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(config: RunConfig | None = None) -> DistContext:
    """This process's distributed context, initialising the process group if torchrun asks for it.

    ``config`` is accepted for symmetry with the other phases (and future options); the device and
    world come from the environment, never from the config, so one YAML runs anywhere.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _context_from_group(owns_group=False)
    if _torchrun_world_size() > 1:
        return _init_from_env()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return DistContext(rank=0, world_size=1, local_rank=0, device=device)


def _torchrun_world_size() -> int:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1
    needed = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return world if all(name in os.environ for name in needed) else 1


def _local_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _context_from_group(*, owns_group: bool) -> DistContext:
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=_local_device(local_rank),
        owns_group=owns_group,
    )


def _init_from_env() -> DistContext:
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    device = _local_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=PROCESS_GROUP_TIMEOUT)
    log.info(
        "process group ready: rank %d of %d on %s (%s)",
        dist.get_rank(),
        dist.get_world_size(),
        device,
        backend,
    )
    return _context_from_group(owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if ``setup`` created it."""
    import torch.distributed as dist

    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- model wrapping -----------------------------------------------------------------------------


def use_bf16(config: RunConfig | None, ctx: DistContext) -> bool:
    """Whether the run computes in bf16: asked for, or ``auto`` on a GPU that supports it."""
    precision = getattr(config, "precision", "auto")
    if precision == "bf16":
        return True
    if precision != "auto" or ctx.device.type != "cuda":
        return False
    return bool(torch.cuda.is_bf16_supported())


def wrap_model(
    model: torch.nn.Module, ctx: DistContext, config: RunConfig | None = None
) -> torch.nn.Module:
    """The model as the training loop should call it.

    One process: the model itself. Several CPU processes: DDP over gloo. Several GPUs: FSDP2,
    sharding each decoder layer and then the root, in bf16 with fp32 gradient reduction when the
    run is bf16. ``data_parallel: ddp`` or ``fsdp2`` forces the choice.
    """
    if not ctx.distributed:
        return model
    if uses_fsdp2(config, ctx):
        return apply_fsdp2(model, bf16=use_bf16(config, ctx))
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def uses_fsdp2(config: RunConfig | None, ctx: DistContext) -> bool:
    """Whether several processes shard the model (FSDP2) rather than replicate it (DDP)."""
    if not ctx.distributed:
        return False
    choice = getattr(config, "data_parallel", "auto")
    if choice == "auto":
        return ctx.device.type == "cuda"
    return bool(choice == "fsdp2")


def is_sharded(model: torch.nn.Module) -> bool:
    """True for a model sharded by FSDP2: its forward is a collective that every rank must join."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def apply_fsdp2(model: torch.nn.Module, *, bf16: bool) -> torch.nn.Module:
    """Shard ``model`` with FSDP2 over the default process group (any world size, including 1)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    log.info("FSDP2: sharded %d decoder layers and the root (bf16=%s)", len(layers), bf16)
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (also inside a PEFT wrapper).

    Hugging Face names the block classes in ``_no_split_modules``; failing that, the children of
    the first ``layers`` ModuleList are taken.
    """
    names = set(_no_split_modules(model))
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names]
        if found:
            return found
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, torch.nn.ModuleList):
            return list(module)
    return []


def _no_split_modules(model: torch.nn.Module) -> list[str]:
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps (FSDP2 shards in place, so its model is already the module)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step.

    ``with gradient_sync(model, enabled=is_last_micro_batch): loss.backward()``. A no-op for a
    single process.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        if enabled:
            yield
        else:
            with model.no_sync():
                yield
        return
    setter = getattr(model, "set_requires_gradient_sync", None)  # FSDP2
    if setter is None:
        yield
        return
    setter(enabled)
    try:
        yield
    finally:
        setter(True)


# --- collectives --------------------------------------------------------------------------------


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, as a new tensor on ``tensor``'s device."""
    if not ctx.distributed:
        return tensor.clone()
    import torch.distributed as dist

    work = tensor.detach().to(_collective_device(ctx), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a cancel seen by rank 0)."""
    if not ctx.distributed:
        return flag
    total = all_reduce_sum(torch.tensor([1.0 if flag else 0.0]), ctx)
    return bool(total.item() > 0)


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable value)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device(ctx))
    return box[0]  # type: ignore[no-any-return]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if not ctx.distributed:
        return
    import torch.distributed as dist

    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index or 0])
    else:
        dist.barrier()


def _collective_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``.

    Deterministic and strided (so a length-sorted list is spread evenly); shares differ in length
    by at most one. Every item lands on exactly one rank.
    """
    return list(items[ctx.rank :: ctx.world_size])


# --- checkpoints ----------------------------------------------------------------------------------


def full_state_dict(model: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on CPU, on rank 0 (``None`` on the other ranks).

    A collective under DDP and FSDP2: every rank must call it. Keys are the unwrapped model's
    (no ``module.`` prefix), so the result loads into a plain model.
    """
    if not ctx.distributed:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(unwrap(model), options=options)
    return state if ctx.is_main else None  # type: ignore[return-value]


def load_full_state_dict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor] | None,
    ctx: DistContext,
    *,
    strict: bool = True,
) -> None:
    """Load a full state dict (from ``full_state_dict`` or a checkpoint) into a wrapped model.

    With several processes only rank 0 needs ``state`` (others may pass ``None``): it is
    broadcast. A collective: every rank must call it.
    """
    if not ctx.distributed:
        if state is None:
            raise ValueError("load_full_state_dict: a single process needs the state dict")
        model.load_state_dict(state, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    full: dict[str, Any] = dict(state) if ctx.is_main and state is not None else {}
    set_model_state_dict(unwrap(model), full, options=options)


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext
) -> dict[str, Any] | None:
    """The optimizer's whole state on CPU, keyed by parameter name, on rank 0 (``None`` elsewhere).

    Under FSDP2 each rank holds the moments of its own shards only; this gathers them (a
    collective: every rank must call it). Names, unlike ``optimizer.state_dict()``'s positions,
    still match when the model is wrapped differently on resume.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(unwrap(model), optimizer, options=options)
    return state if ctx.is_main else None


def load_optimizer_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    ctx: DistContext,
) -> None:
    """Load a full, name-keyed optimizer state (from ``full_optimizer_state``) on every rank.

    Every rank passes the same full state (read from the same checkpoint files); each keeps the
    part that belongs to its own shards. A collective under FSDP2: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(unwrap(model), optimizer, state, options=options)
