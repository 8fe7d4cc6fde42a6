"""The ``eval_metric`` a run is scored by at every checkpoint, on real greedy generations.

``eval_metric`` is a built-in name (``exact_match``, ``json_list_f1``) or a Python function
``f(predictions, references) -> float`` (higher is better) defined in the notebook. A function
cannot travel in YAML, so the config holds its name (``python:NAME``) and this module keeps the
function for the kernel that defined it: only the ``inkernel`` backend can call it.

This module holds the names and the metric functions, below the config that checks the names;
``ftmagic.train.scoring`` draws the eval sample and scores a checkpoint's generations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ftmagic.errors import ConfigError, RunError

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
