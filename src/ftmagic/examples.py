"""The bundled example datasets and the helpers that score drug-name extraction (NER).

The data lives in ``ftmagic/resources/`` and is written by ``scripts/make_datasets.py``:

- ``ner``: chats whose assistant turn is a JSON list of the drug names in a sentence
  (``train``, ``eval``, ``test``; the three splits share no drug name).
- ``chat``: multi-turn shop-assistant chats (``train``, ``eval``).
- ``pretrain``: folders of ``.txt`` field notes for continued pretraining (``train``, ``eval``).

The scoring helpers take a model's raw answers, so they work for any model and any backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ftmagic.errors import DataError

SPLITS: dict[str, tuple[str, ...]] = {
    "ner": ("train", "eval", "test"),
    "chat": ("train", "eval"),
    "pretrain": ("train", "eval"),
}
"""Bundled datasets and their splits (a constant)."""

FOLDER_DATASETS = ("pretrain",)
"""Datasets stored as a folder of ``.txt`` files per split rather than one JSONL file."""

Messages = list[dict[str, str]]


def path(dataset: str, split: str = "train") -> str:
    """The local path of a bundled split: a ``.jsonl`` file, or a folder of ``.txt`` files for
    ``pretrain``. Use it as ``train_data_path`` / ``eval_data_path``."""
    _check(dataset, split)
    root = Path(str(resources.files("ftmagic.resources"))) / dataset
    found = root / split if dataset in FOLDER_DATASETS else root / f"{split}.jsonl"
    return str(found)


def load(dataset: str, split: str = "train") -> list[dict[str, Any]]:
    """The records of a bundled split. ``pretrain`` gives ``{"source", "text"}`` per file."""
    where = Path(path(dataset, split))
    if dataset in FOLDER_DATASETS:
        return [
            {"source": f.name, "text": f.read_text(encoding="utf-8")}
            for f in sorted(where.glob("*.txt"))
        ]
    with where.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _check(dataset: str, split: str) -> None:
    if dataset not in SPLITS:
        raise DataError(
            "is not a bundled dataset",
            source="ftmagic.examples",
            field="dataset",
            value=dataset,
            fix=f"use one of {', '.join(SPLITS)}",
        )
    if split not in SPLITS[dataset]:
        raise DataError(
            f"is not a split of the '{dataset}' dataset",
            source="ftmagic.examples",
            field="split",
            value=split,
            fix=f"use one of {', '.join(SPLITS[dataset])}",
        )


# --- NER helpers --------------------------------------------------------------------------------
def prompt_messages(example: dict[str, Any]) -> Messages:
    """The messages a model sees for ``example``: everything before the final assistant answer."""
    messages: Messages = list(example["messages"])
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def reference_entities(example: dict[str, Any]) -> list[str]:
    """The drug names in ``example``'s answer (its final assistant message)."""
    return extract_entities(example["messages"][-1]["content"])


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'')


def extract_entities(text: str) -> list[str]:
    """The strings in a model's JSON-list answer, parsed as forgivingly as possible.

    Models, small ones especially, add prose around the list, stop before the closing bracket or
    repeat themselves. The first ``[...]`` is parsed as JSON when it can be; otherwise the quoted
    strings after the first ``[`` are taken; otherwise the comma-separated words inside the
    brackets. Anything without a list gives ``[]``. Duplicates and empty strings are dropped.

    >>> extract_entities('Sure: ["metformin", "lisinopril"] hope this helps')
    ['metformin', 'lisinopril']
    >>> extract_entities('["metformin", "lisino')
    ['metformin']
    >>> extract_entities("no drugs here")
    []
    """
    start = text.find("[")
    if start < 0:
        return []
    body = text[start:]
    end = body.find("]")
    items: list[Any] | None = None
    if end >= 0:
        try:
            parsed = json.loads(body[: end + 1])
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            items = parsed
    if items is None:
        items = _best_effort_items(body[1:end] if end >= 0 else body[1:])
    return _clean(items)


def is_json_list(text: str) -> bool:
    """Whether ``text`` holds a well-formed JSON list of strings (prose around it allowed): the
    answer format the NER task asks for, whatever the names in it.

    >>> is_json_list('["a", "b"]'), is_json_list("[]"), is_json_list('["a", "b'), is_json_list("a")
    (True, True, False, False)
    """
    start = text.find("[")
    end = text.find("]", start)
    if start < 0 or end < 0:
        return False
    try:
        parsed = json.loads(text[start : end + 1])
    except ValueError:
        return False
    return isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)


def _best_effort_items(inside: str) -> list[str]:
    if '"' in inside or "'" in inside:
        return [double if double else single for double, single in _QUOTED.findall(inside)]
    return [part.strip() for part in inside.split(",")] if inside.strip() else []


def _clean(items: Iterable[Any]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            continue
        name = str(item).strip()
        if name and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def ner_scores(
    predictions: Sequence[Iterable[str]], references: Sequence[Iterable[str]]
) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted entity sets against references.

    Names compare case-insensitively and without surrounding spaces; each example's names count
    once. A ratio with nothing to count (no predictions at all, say) is 0.0, except that a perfect
    empty answer on data without entities scores 1.0 everywhere.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"ner_scores: {len(predictions)} predictions for {len(references)} references"
        )
    tp = fp = fn = 0
    for predicted, expected in zip(predictions, references, strict=True):
        pred = {p.strip().casefold() for p in predicted}
        ref = {r.strip().casefold() for r in expected}
        tp += len(pred & ref)
        fp += len(pred - ref)
        fn += len(ref - pred)
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate_ner(
    generate_fn: Callable[[Messages], str] | Callable[[list[Messages]], list[str]],
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Score a model on NER chat ``examples``.

    ``generate_fn`` answers one conversation (a list of messages without the final answer) with
    text; with ``batch_size`` it answers a list of conversations with a list of texts instead, which
    is much faster for local models. Returns ``ner_scores`` plus ``json_valid`` (the fraction of
    answers that are a well-formed JSON list), ``n``, the raw ``outputs``, the parsed
    ``predictions`` and the ``references`` (handy for a table of mistakes).
    """
    prompts = [prompt_messages(example) for example in examples]
    if batch_size:
        outputs: list[str] = []
        for i in range(0, len(prompts), batch_size):
            answers = generate_fn(prompts[i : i + batch_size])  # type: ignore[arg-type]
            outputs.extend(str(a) for a in answers)
    else:
        outputs = [str(generate_fn(p)) for p in prompts]  # type: ignore[arg-type]
    predictions = [extract_entities(text) for text in outputs]
    references = [reference_entities(example) for example in examples]
    scores: dict[str, Any] = dict(ner_scores(predictions, references))
    valid = sum(is_json_list(text) for text in outputs)
    scores.update(
        json_valid=valid / len(outputs) if outputs else 0.0,
        n=len(examples),
        outputs=outputs,
        predictions=predictions,
        references=references,
    )
    return scores
