"""Loading models and tokenizers: safetensors only, never remote code, weights kept per process.

This sits with the catalog at the bottom layer, so training, tracking and serving all load
models the same way without importing each other.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ftmagic.caching import CopyCache
from ftmagic.catalog import model_path
from ftmagic.errors import ModelError, RunError


@functools.lru_cache(maxsize=16)
def load_tokenizer(name: str) -> Any:
    """The model's tokenizer (no remote code), cached per process."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path(name), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{name}': its tokenizer cannot be loaded ({err}).") from None


WEIGHTS_CACHE_SIZE = 2  # models kept per process
WEIGHTS_CACHE_MAX_BYTES = 2 * 1024**3  # bigger models are loaded every time, never kept
_weights_cache: CopyCache[Any] = CopyCache(WEIGHTS_CACHE_SIZE)


def load_model(name_or_path: str, *, dtype: Any = None) -> Any:
    """A causal LM from safetensors weights only, never running remote code.

    A local model folder's weights are kept per process (keyed by the folder, its newest file's
    mtime and the dtype) so the next run in the kernel starts faster; each call returns its own
    deep copy, so runs never share weights that training changes."""
    path = model_path(name_or_path)
    key = _weights_key(path, dtype)
    cached = _weights_cache.get(key)
    if cached is not None:
        return cached
    model = _load_weights(name_or_path, path, dtype)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size <= WEIGHTS_CACHE_MAX_BYTES:
        _weights_cache.put(key, model)
    return model


def clear_weights_cache() -> None:
    """Forget the weights kept by ``load_model``."""
    _weights_cache.clear()


def _weights_key(path: str, dtype: Any) -> tuple[str, int, str] | None:
    """``None`` (not cached) for hub names and folders that cannot be read."""
    folder = Path(path)
    try:
        newest = max((f.stat().st_mtime_ns for f in folder.iterdir() if f.is_file()), default=0)
    except OSError:
        return None
    return (str(folder.resolve()), newest, str(dtype)) if newest else None


def _load_weights(name_or_path: str, path: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from ftmagic import quiet

    quiet.apply()  # no "Loading weights" bar in a notebook cell that loads a model itself

    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"model '{name_or_path}': its weights cannot be loaded ({err}).") from None


def model_folder(path: Path) -> Path:
    """The loadable model inside a checkpoint or registered-model folder (or ``path`` itself)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    raise RunError(
        f"{path} holds no model: expected config.json (full weights) or adapter_config.json "
        "(LoRA) in it. Fix: point custom_weights_path at a checkpoint "
        "folder, runs:/RUN_ID or models:/name/version"
    )


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter(folder: Path) -> bool:
    """Whether ``folder`` holds a LoRA adapter (rather than full weights)."""
    return (Path(folder) / ADAPTER_CONFIG).exists()


def adapter_weights(folder: Path) -> Path:
    """The adapter's safetensors file in ``folder``. An adapter saved only as
    ``adapter_model.bin`` (a pickle, which can run code as it loads) is refused."""
    folder = Path(folder)
    path = folder / ADAPTER_WEIGHTS
    if path.exists():
        return path
    found = "only adapter_model.bin" if (folder / "adapter_model.bin").exists() else "no weights"
    raise ModelError(
        f"LoRA adapter {folder} holds {found}: ftmagic loads adapters from "
        f"{ADAPTER_WEIGHTS} only. Fix: convert it to safetensors, e.g. load it with peft "
        "(PeftModel.from_pretrained) and save it with save_pretrained(folder, "
        "safe_serialization=True)"
    )


def load_adapter_model(folder: Path, *, trainable: bool = False) -> Any:
    """The LoRA adapter in ``folder`` on its base model (a peft model), from safetensors only.

    ``trainable`` keeps the adapter's weights trainable (peft freezes them otherwise)."""
    from peft import PeftModel

    folder = Path(folder)
    adapter_weights(folder)
    base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(load_model(base), str(folder), is_trainable=trainable)
