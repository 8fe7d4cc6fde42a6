"""The pieces a run trains with: the model (base, custom weights or a checkpoint's), its LoRA
adapter, the optimizer, the learning-rate schedule and the autocast dtype."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.errors import RunError
from ftmagic.models.loading import (
    adapter_weights,
    is_adapter,
    load_adapter_model,
    load_model,
    model_folder,
)

if TYPE_CHECKING:
    from ftmagic.config import RunConfig
    from ftmagic.train.distributed import DistContext


def load_weights(config: RunConfig, resume_from: Path | None) -> Any:
    """The model to train: the checkpoint's (resume, full), ``custom_weights_path`` or the base."""
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
        return load_custom_weights(config.custom_weights_path, config.method)
    return load_model(config.model)


def load_custom_weights(custom_weights_path: str, method: str) -> Any:
    """The model of ``custom_weights_path``. A LoRA adapter there is merged into its base when
    every weight trains (``method: full``), and trained on when ``method: lora``."""
    from ftmagic.tracking import store

    folder = model_folder(Path(store.resolve_weights(custom_weights_path)))
    if not is_adapter(folder):
        return load_model(str(folder))
    if method == "lora":
        return load_adapter_model(folder, trainable=True)
    merged = load_adapter_model(folder).merge_and_unload()
    merged.requires_grad_(True)  # peft froze the base weights it loaded the adapter onto
    return merged


def is_lora(model: Any) -> bool:
    """Whether ``model`` already carries a LoRA adapter (a peft model)."""
    return hasattr(model, "peft_config")


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


def lora_settings(model: Any) -> str:
    """The adapter's rank and alpha, as the run's summary shows them.

    >>> from types import SimpleNamespace
    >>> lora_settings(SimpleNamespace(peft_config={"default": SimpleNamespace(r=4, lora_alpha=8)}))
    'r=4, alpha=8'
    """
    settings = model.peft_config["default"]
    return f"r={settings.r}, alpha={settings.lora_alpha}"


def load_adapter(model: Any, resume_from: Path) -> None:
    """Put a checkpoint's LoRA weights into a freshly wrapped model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(adapter_weights(model_folder(resume_from))))
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
