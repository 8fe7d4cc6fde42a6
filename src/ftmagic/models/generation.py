"""Sample generations: for the eval prompts at every checkpoint and for ``Run.generate``.

Decoding is greedy so that the generations of two checkpoints differ only because the weights do.
A prompt is wrapped in the chat template (as one user message) when the tokenizer has one, the same
way the model saw its training conversations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


def load_for_inference(model_dir: str | Path) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a checkpoint, a registered model or a model folder.

    A LoRA folder (``adapter_config.json``) is loaded onto its base model and merged, so callers
    always get a plain causal LM.
    """
    from ftmagic.models.loading import (
        is_adapter,
        load_adapter_model,
        load_model,
        load_tokenizer,
        model_folder,
    )

    folder = model_folder(Path(model_dir))
    if not is_adapter(folder):
        return load_model(str(folder)), load_tokenizer(str(folder))
    model = load_adapter_model(folder)
    return model.merge_and_unload(), load_tokenizer(str(folder))


def prompt_ids(tokenizer: Any, prompt: str | Messages, *, chat: bool | None = None) -> list[int]:
    """Token ids of ``prompt``, with the chat template and a generation prompt when it applies."""
    use_template = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        raise TypeError("a model without a chat template takes a prompt string, not messages")
    return list(tokenizer(prompt)["input_ids"])


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Messages,
    *,
    max_new_tokens: int = 64,
    chat: bool | None = None,
) -> str:
    """Greedy continuation of ``prompt`` (a string or chat messages), without the prompt.

    ``model`` is a loaded model or a folder (checkpoint, registered model, model folder); with a
    folder, ``tokenizer`` may be None and is loaded from it.
    """
    import torch

    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_for_inference(model)
        tokenizer = tokenizer or loaded_tokenizer
    ids = prompt_ids(tokenizer, prompt, chat=chat)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
    finally:
        model.train(was_training)
    return str(tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True))


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: list[str | Messages],
    *,
    max_new_tokens: int,
    chat: bool | None,
) -> list[dict[str, str]]:
    """One ``{"prompt", "response"}`` row per eval prompt (the store's generations table); a
    message list is shown by its last user message."""
    return [
        {
            "prompt": prompt_label(p),
            "response": generate(model, tokenizer, p, max_new_tokens=max_new_tokens, chat=chat),
        }
        for p in prompts
    ]


def prompt_label(prompt: str | Messages) -> str:
    """A prompt as one line of text: a string as it is, messages by the last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content")) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else json.dumps(prompt, ensure_ascii=False)
