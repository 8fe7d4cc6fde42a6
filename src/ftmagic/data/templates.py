"""What a model's chat template does, checked before training: its family, the token an assistant
turn ends with and whether generation stops on it, and the training-vs-serving prompt check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Markers of the published templates, most specific first.
FAMILIES = (
    ("<|START_OF_TURN_TOKEN|>", "Command R"),
    ("<｜Assistant｜>", "DeepSeek-R1"),
    ("<start_of_turn>", "Gemma"),
    ("<|start_header_id|>", "Llama 3"),
    ("<|start_of_role|>", "Granite"),
    ("<|im_sep|>", "Phi-4"),
    ("/no_think", "SmolLM3"),
    ("<think>", "Qwen3"),
    ("<|im_start|>", "ChatML (Qwen2.5, SmolLM)"),
    ("<|channel|>", "gpt-oss"),
    ("<|end|>", "Phi-3"),
    ("<|assistant|>", "OLMo 2 / Tulu"),
    ("[INST]", "Mistral / Llama 2"),
)


def template_family(tokenizer: Any) -> str:
    """The family a chat template belongs to, from its markers ("unknown" when none match)."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    for marker, family in FAMILIES:
        if marker in template:
            return family
    return "unknown"


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The last token of the text trained at the end of every assistant turn (the one generation
    must stop on), or None when the template has no chat turns or ends them with plain text."""
    from ftmagic.data.render import _special_strings, turn_closing

    if not getattr(tokenizer, "chat_template", None):
        return None
    closing = turn_closing(tokenizer)
    ends = [(closing.rfind(s) + len(s), s) for s in _special_strings(tokenizer) if s in closing]
    ends = [(end, s) for end, s in ends if end == len(closing)]
    return max(ends, key=lambda e: len(e[1]))[1] if ends else None


def stop_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """The token ids generation stops on: the generation config's eos, else the tokenizer's."""
    eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def missing_stop_token(tokenizer: Any, generation_config: Any) -> tuple[str, int] | None:
    """``(token, id)`` of the trained end-of-turn token when generation would not stop on it."""
    token = end_of_turn_token(tokenizer)
    if token is None:
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id in stop_ids(generation_config, tokenizer):
        return None
    return token, int(token_id)


def add_stop_token(model: Any, tokenizer: Any) -> str | None:
    """Make ``model``'s generation config stop on the trained end-of-turn token (saved with the
    model from then on). Returns a message saying what was added, or None when nothing was."""
    config = getattr(model, "generation_config", None)
    missing = missing_stop_token(tokenizer, config)
    if missing is None or config is None:
        return None
    token, token_id = missing
    config.eos_token_id = [*stop_ids(config, tokenizer), token_id]
    return (
        f"the chat template ends assistant turns with {token}, which generation did not stop "
        f"on: added it to the generation config's eos_token_id ({config.eos_token_id})"
    )


def stop_token_warning(model_dir: str | Path, tokenizer: Any) -> str | None:
    """A validation note when the saved generation config would not stop at the end of a turn."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        config = None
    missing = missing_stop_token(tokenizer, config)
    if missing is None:
        return None
    token, token_id = missing
    return (
        f"the chat template ends assistant turns with {token} (id {token_id}), but generation "
        f"stops on {stop_ids(config, tokenizer)}: the model would not stop after an answer. "
        "Training adds it to the saved generation config."
    )


PROBE = [
    {"role": "user", "content": "Ftmagic probe question"},
    {"role": "assistant", "content": "Ftmagic probe answer"},
    {"role": "user", "content": "Ftmagic probe follow-up"},
    {"role": "assistant", "content": "Ftmagic probe second answer"},
]


def serving_diff(tokenizer: Any) -> str | None:
    """Where the prompt the model gets at inference (``add_generation_prompt=True``) differs from
    the text an assistant turn follows in training, on a two-turn probe conversation."""
    from ftmagic.data.render import chat_layout

    try:
        return chat_layout(tokenizer, PROBE).serving_diff
    except Exception:  # a template that refuses the probe: the data's own errors say why
        return None


def chat_report_notes(log: Any, tokenizer: Any, model: str) -> list[str]:
    """Validation warnings about chat data and the model's template: the records' own notes
    (``rules.chat_notes``), ``name`` fields the template ignores, an end-of-turn token that
    generation does not stop on, and a training-vs-serving prompt difference."""
    from ftmagic.data.render import template_reads_name

    notes = list(log.notes)
    if log.num_notes > len(log.notes):
        notes.append(f"... and {log.num_notes - len(log.notes)} more such warnings")
    if log.uses_name and not template_reads_name(tokenizer):
        notes.append(
            f"Messages have a 'name', but the chat template of {model} does not use it: names "
            "are left out of the training text"
        )
    try:
        from ftmagic.catalog import model_path

        stop = stop_token_warning(model_path(model), tokenizer)
    except Exception:  # no local generation config to read: the trainer still checks
        stop = None
    if stop:
        notes.append(stop)
    diff = serving_diff(tokenizer)
    if diff:
        notes.append(
            f"Training vs serving: {diff}. Earlier turns are trained as the template renders "
            "history; chat_turns: split trains every turn after the prompt inference uses"
        )
    return notes
