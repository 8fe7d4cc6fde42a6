"""Local checkpoints: what a run needs to continue exactly where it stopped.

A checkpoint folder holds:

- the weights as safetensors with their config and the tokenizer, at the top of the folder (the
  adapter alone, ``adapter_model.safetensors`` + ``adapter_config.json``, for LoRA), so the folder
  itself loads with ``from_pretrained`` for ``custom_weights_path`` and ``Run.generate``;
- ``optimizer.pt``, ``scheduler.pt`` and ``rng.pt``: their state dicts (tensors and plain
  values only, read back with ``torch.load(weights_only=True)``); the optimizer state is the
  whole (unsharded) state keyed by parameter name (format 2; format 1 keyed it by position);
- ``trainer_state.json``: the data position (step, epoch, tokens, order seed) and the recent losses;
- ``config.yaml``: the run's config.

The weights and the optimizer state are full (unsharded) state dicts gathered on rank 0 and the
data position is global, so a run can resume with a different number of processes. A folder is
written under a temporary name and renamed when complete; the MLflow commit
(``store.commit_checkpoint``, which writes the ``COMPLETE`` marker last) is a second step done by
the trainer, so a half-written checkpoint is never listed or used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftmagic.errors import RunError

STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 2


@dataclass
class TrainState:
    """Where training is: enough, with the data plan, to rebuild the next batch exactly."""

    step: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    order_seed: int = 0
    data_fingerprint: str = ""
    recent_losses: list[float] = field(default_factory=list)
    last_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class CheckpointContents:
    """Everything a checkpoint stores, gathered on rank 0 before writing."""

    model: Any
    tokenizer: Any
    model_state: dict[str, Any] | None
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng_state: dict[str, Any]
    state: TrainState
    config_yaml: str


def write_checkpoint(folder: Path, contents: CheckpointContents) -> Path:
    """Write ``contents`` into ``folder`` atomically (temporary name, then rename).

    Raises ``RunError`` naming the folder when it cannot be written, and saying how much space it
    needs when the disk is full; nothing of the attempt is left behind, and the folders of earlier
    checkpoints are left as they are.
    """
    partial = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _write_files(partial, contents)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(partial, folder)
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # the empty folder the store made for this step
        if no_space_left(err):
            raise RunError(
                f"no space left on device while writing checkpoint step {contents.state.step} "
                f"(needs about {_megabytes(checkpoint_bytes(contents))}) in {folder.parent}. "
                "Fix: free some space there; earlier checkpoints are intact"
            ) from None
        if isinstance(err, OSError):
            raise RunError(
                f"cannot write checkpoint folder {folder}: {err.strerror or err}. Fix: make it "
                "writable or free some space; earlier checkpoints are intact"
            ) from None
        raise
    return folder


def _write_files(partial: Path, contents: CheckpointContents) -> None:
    import torch

    contents.model.save_pretrained(partial, state_dict=contents.model_state)
    contents.tokenizer.save_pretrained(partial)
    torch.save(contents.optimizer_state, partial / "optimizer.pt")
    torch.save(contents.scheduler_state, partial / "scheduler.pt")
    torch.save(contents.rng_state, partial / "rng.pt")
    (partial / STATE_FILE).write_text(json.dumps(contents.state.to_dict(), indent=1))
    (partial / "config.yaml").write_text(contents.config_yaml)


# What a full disk looks like besides OSError(ENOSPC): torch.save's zip writer reports a short
# write as "unexpected pos", safetensors reports the Rust I/O error kind.
_NO_SPACE_TEXTS = (
    "no space left on device",
    "unexpected pos",
    "storagefull",
    "disk quota exceeded",
)


def no_space_left(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says the disk is full.

    >>> import errno
    >>> no_space_left(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> no_space_left(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"))
    True
    >>> no_space_left(OSError(errno.EACCES, "Permission denied"))
    False
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen).lower() for text in _NO_SPACE_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def checkpoint_bytes(contents: CheckpointContents) -> int:
    """About the bytes a checkpoint of ``contents`` takes: its weights (the adapter's alone for
    LoRA) and the optimizer, scheduler and RNG states."""
    weights = contents.model_state
    if weights is None:
        weights = contents.model.state_dict()
    if hasattr(contents.model, "peft_config"):
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(contents.model, state_dict=weights)
    states = (contents.optimizer_state, contents.scheduler_state, contents.rng_state)
    return tensor_bytes(weights) + sum(tensor_bytes(s) for s in states)


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (nested dicts, lists and tuples), each storage once.

    >>> import torch
    >>> weight = torch.zeros(4, 8)
    >>> tensor_bytes({"a": weight, "b": [weight, torch.zeros(2, dtype=torch.float64)], "c": 1})
    144
    """
    seen: set[int] = set()

    def walk(item: Any) -> int:
        if isinstance(item, dict):
            return sum(walk(v) for v in item.values())
        if isinstance(item, (list, tuple)):
            return sum(walk(v) for v in item)
        if hasattr(item, "untyped_storage") and hasattr(item, "nbytes"):
            key = item.untyped_storage().data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return int(item.nbytes)
        return 0

    return walk(value)


def _megabytes(size: int) -> str:
    """``size`` bytes in MB, as a message shows them.

    >>> _megabytes(7_340_032), _megabytes(123_456_789_000)
    ('7.3 MB', '123,457 MB')
    """
    mb = size / 1e6
    return f"{mb:.1f} MB" if mb < 100 else f"{mb:,.0f} MB"


def read_state(folder: Path) -> TrainState:
    """The data position stored in checkpoint ``folder``."""
    path = Path(folder) / STATE_FILE
    try:
        return TrainState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        raise RunError(f"checkpoint {folder} has no readable {STATE_FILE}: {err}") from None


def read_torch(folder: Path, name: str) -> Any:
    """Read a state dict saved by ``write_checkpoint`` (tensors and plain values only)."""
    import torch

    return torch.load(Path(folder) / name, map_location="cpu", weights_only=True)


def keyed_by_name(optimizer_state: dict[str, Any]) -> bool:
    """Whether an optimizer state is keyed by parameter name (format 2) rather than position."""
    groups = optimizer_state.get("param_groups", [])
    params = [param for group in groups for param in group.get("params", [])]
    return bool(params) and all(isinstance(param, str) for param in params)


def capture_rng() -> dict[str, Any]:
    """The random states that training consumes (python, torch CPU, every CUDA device)."""
    import torch

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
