"""The ``eval_metric`` a run is scored by at every checkpoint, on real greedy generations.

``eval_metric`` is a built-in name (``exact_match``, ``json_list_f1``) or a Python function
``f(predictions, references) -> float`` (higher is better) defined in the notebook. A function
cannot travel in YAML, so the config holds its name (``python:NAME``) and this module keeps the
function for the kernel that defined it: only the ``inkernel`` backend can call it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftmagic.errors import ConfigError, RunError

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

MetricFn = Callable[[Sequence[str], Sequence[str]], float]
PYTHON_PREFIX = "python:"

# Functions from the notebook, by config name: the one place a callable can live, since the
# config itself must stay YAML. Filled by ``metric_name`` when a config is built.
_NOTEBOOK_METRICS: dict[str, MetricFn] = {}


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of answers equal to the reference, ignoring surrounding whitespace."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(p.strip() == r.strip() for p, r in pairs) / len(pairs) if pairs else 0.0


def json_list_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Micro F1 of the items of JSON-list answers against the reference lists (case-insensitive;
    an answer that is not quite JSON is read forgivingly)."""
    from ftmagic.examples import extract_entities, ner_scores

    scores = ner_scores(
        [extract_entities(p) for p in predictions], [extract_entities(r) for r in references]
    )
    return float(scores["f1"])


BUILT_IN: dict[str, MetricFn] = {"exact_match": exact_match, "json_list_f1": json_list_f1}


def metric_name(value: Any) -> str | None:
    """The config value for ``eval_metric``: a built-in name, or ``python:NAME`` for a function
    (kept here for this kernel)."""
    if value is None or value == "":
        return None
    if callable(value):
        name = f"{PYTHON_PREFIX}{getattr(value, '__name__', 'metric')}"
        _NOTEBOOK_METRICS[name] = value
        return name
    text = str(value).strip()
    if text in BUILT_IN or text.startswith(PYTHON_PREFIX):
        return text
    raise ConfigError(
        "eval_metric",
        "is not a metric",
        value=value,
        allowed=f"{', '.join(BUILT_IN)}, or a Python function f(predictions, references) -> float",
    )


def resolve(name: str) -> MetricFn:
    if name in BUILT_IN:
        return BUILT_IN[name]
    found = _NOTEBOOK_METRICS.get(name)
    if found is None:
        raise RunError(
            f"eval_metric {name} is a function of the kernel that started the run, and this "
            "process cannot call it. Fix: train with backend inkernel, or use a built-in metric "
            f"({', '.join(BUILT_IN)})"
        )
    return found


def metric_key(name: str) -> str:
    """The MLflow metric that holds the score: ``eval/<name>``."""
    return "eval/" + name.removeprefix(PYTHON_PREFIX)


# --- the sample and the score ------------------------------------------------------------------


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
    if task_type == "CHAT_COMPLETION" and isinstance(messages, list) and len(messages) > 1:
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
    chat = config.task_type == "CHAT_COMPLETION"
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
