"""QLoRA: the base model's linear weights in 4 bits (NF4 with double quantisation, bitsandbytes),
LoRA adapters trained on top in bf16.

bitsandbytes' 4-bit kernels run on CUDA GPUs only; it is the optional ``gpu`` extra
(``pip install 'ftmagic[gpu]'``). Without either, ``check`` says what is missing before any
weights load.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ftmagic.errors import RunError


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check(*, device_type: str) -> None:
    """A readable error unless 4-bit loading can run on ``device_type``."""
    missing = []
    if device_type != "cuda":
        missing.append("a CUDA GPU (this process trains on the CPU)")
    if not bitsandbytes_installed():
        missing.append("the bitsandbytes package (pip install 'ftmagic[gpu]')")
    if missing:
        raise RunError(
            "load_in_4bit (QLoRA) needs " + " and ".join(missing) + ". Fix: run on a machine "
            "with an NVIDIA GPU and the gpu extra, or set load_in_4bit: false to train LoRA on "
            "the full-precision base"
        )


def load_4bit(name: str, *, gradient_checkpointing: bool) -> Any:
    """``name``'s causal LM with 4-bit linear weights, ready for LoRA (norms in fp32, inputs
    that require grad for checkpointing)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ftmagic.catalog import model_path

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path(name),
        quantization_config=quantization,
        dtype=torch.bfloat16,
        trust_remote_code=False,
        use_safetensors=True,
        device_map={"": torch.cuda.current_device()},
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
