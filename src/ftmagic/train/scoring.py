"""Scoring a checkpoint by the run's ``eval_metric``: a seeded sample of the eval data, greedy
generations for its prompts, and the metric (``ftmagic.metrics``) over them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmagic.config import TaskType
from ftmagic.metrics import metric_key, resolve

if TYPE_CHECKING:
    from ftmagic.config import RunConfig


@dataclass(frozen=True)
class Sample:
    """One eval example: what the model is asked, and the answer the data holds."""

    prompt: str | list[dict[str, str]]
    reference: str


def eval_sample(path: str, task_type: str, size: int, seed: int) -> tuple[Sample, ...]:
    """A seeded sample of ``size`` examples of ``path``, in file order."""
    from ftmagic.data.readers import iter_records

    samples = [s for r in iter_records(path) if (s := to_sample(r.data, task_type)) is not None]
    if len(samples) > size:
        chosen = sorted(random.Random(seed).sample(range(len(samples)), size))
        samples = [samples[i] for i in chosen]
    return tuple(samples)


def to_sample(data: dict[str, Any], task_type: str) -> Sample | None:
    """A chat's last assistant turn as the reference, the turns before it as the prompt; or an
    instruction's prompt and response. None for other shapes."""
    messages = data.get("messages")
    if task_type == TaskType.CHAT_COMPLETION and isinstance(messages, list) and len(messages) > 1:
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
            return Sample(prompt, str(last.get("content", "")))
    if "prompt" in data and ("response" in data or "completion" in data):
        return Sample(str(data["prompt"]), str(data.get("response", data.get("completion"))))
    return None


@dataclass(frozen=True)
class Score:
    key: str
    value: float
    rows: list[dict[str, str]]


def score(model: Any, tokenizer: Any, config: RunConfig) -> Score | None:
    """The run's eval_metric on greedy generations for its eval sample; None without one."""
    from ftmagic.models.generation import generate

    if not config.eval_metric or not config.eval_data_path:
        return None
    fn = resolve(config.eval_metric)
    samples = eval_sample(
        config.eval_data_path, config.task_type, config.eval_metric_samples, config.seed
    )
    chat = config.task_type == TaskType.CHAT_COMPLETION
    predictions = [
        generate(model, tokenizer, s.prompt, max_new_tokens=config.max_new_tokens, chat=chat)
        for s in samples
    ]
    references = [s.reference for s in samples]
    value = float(fn(predictions, references))
    rows = [
        {"prompt": _prompt_text(s.prompt), "reference": s.reference, "prediction": p}
        for s, p in zip(samples, predictions, strict=True)
    ]
    return Score(metric_key(config.eval_metric), value, rows)


def _prompt_text(prompt: str | list[dict[str, str]]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def prompt_of(text: str) -> str | list[dict[str, str]]:
    """A stored prompt back as the model was given it (messages for a chat)."""
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, list):
            return value
    return text
