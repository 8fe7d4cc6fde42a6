"""Which attention kernel a run uses, per device.

Packed rows hold several examples that must not attend to each other. Transformers finds the
example boundaries in the rows' ``position_ids`` (which restart at every example) and:

- ``sdpa``: builds a block-diagonal mask per row, so every row pays attention over its whole
  length (``pack_length`` squared), however short its examples;
- ``flash_attention_2``: turns the boundaries into cumulative sequence lengths for the
  variable-length kernel, which computes each example's attention only;
- ``flex_attention``: builds a sparse block mask (a document mask) and skips the blocks between
  examples.

``auto`` keeps today's row-matched SDPA on CPUs (where the variable-length kernels either do not
exist or are not faster) and, for packed rows on a CUDA GPU, takes flash-attention when the
``flash_attn`` package is installed, else ``flex_attention``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ftmagic.errors import RunError

VARLEN = ("flash_attention_2", "flex_attention")


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve(choice: str, *, device_type: str, packing: bool) -> str:
    """The implementation ``choice`` (a config value) means on ``device_type``."""
    if choice != "auto":
        return choice
    if device_type != "cuda" or not packing:
        return "sdpa"
    return "flash_attention_2" if flash_attention_installed() else "flex_attention"


def check(name: str, *, device_type: str) -> None:
    """A readable error when ``name`` cannot run here (before any weights load)."""
    if name == "flash_attention_2":
        if device_type != "cuda":
            raise RunError(
                "attn_implementation flash_attention_2 needs a CUDA GPU. Fix: use "
                "attn_implementation auto (sdpa on CPUs) or sdpa"
            )
        if not flash_attention_installed():
            raise RunError(
                "attn_implementation flash_attention_2 needs the flash-attn package. Fix: "
                "pip install 'ftmagic[gpu]' flash-attn --no-build-isolation, or use "
                "attn_implementation auto (flex_attention without flash-attn)"
            )


def apply(model: Any, name: str, *, chosen_by_auto: bool = False) -> None:
    """Switch a loaded Hugging Face model (or a PEFT wrapper of one) to ``name``. What ``auto``
    chose gives way to the model's own default where the architecture refuses it (Gemma 2's
    soft-capping needs eager attention, which transformers already picked)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) == name:
        return
    try:
        base.set_attn_implementation(name)
    except ValueError:
        if not chosen_by_auto:
            raise
