"""Read a run's training or eval data and tokenize it for the trainer.

Records are first converted to ftmagic's shape (ShareGPT, Alpaca, ``columns:``, ...; see
``ftmagic.data.formats``). Chat and instruction records are rendered one by one with their loss
masks and truncated to the effective context length. Continued-pretraining text (a folder of
``.txt`` files, or records with a ``text`` field) is joined and cut into context-length sequences.
The first bad record stops the load with its ``DataError``; ``ftmagic.validate`` is where all
errors are collected at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ftmagic.data.formats import Converter
from ftmagic.data.readers import iter_records, iter_text_files, looks_like_record_source
from ftmagic.data.render import (
    PRETRAIN,
    ChatOptions,
    TokenizedExample,
    chunk_texts,
    render_examples,
)
from ftmagic.errors import DataError

if TYPE_CHECKING:
    from ftmagic.catalog import ModelEntry
    from ftmagic.config import RunConfig

SPLITS = ("train", "eval")


def effective_context_length(config: RunConfig, entry: ModelEntry | None = None) -> int:
    """``config.context_length`` when set, else the model's own context length."""
    if config.context_length is not None:
        return int(config.context_length)
    if entry is None:
        from ftmagic.catalog import resolve_model

        entry = resolve_model(config.model)
    return int(entry.context_length)


def load_examples(
    config: RunConfig, tokenizer: Any, split: str = "train", *, entry: ModelEntry | None = None
) -> list[TokenizedExample]:
    """The tokenized examples of ``split`` ("train" or "eval"); empty when the run has no eval data.

    Raises the first ``DataError`` met (with its file, line and field).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = config.train_data_path if split == "train" else config.eval_data_path
    field = "train_data_path" if split == "train" else "eval_data_path"
    if not path:
        if split == "eval":
            return []
        raise DataError(
            "no training data is set",
            source="config",
            field=field,
            fix="set train_data_path to a JSONL/Parquet/CSV file, a Delta table or a folder",
        )
    max_length = effective_context_length(config, entry)
    converter = Converter.of(config)
    if config.task_type == PRETRAIN:
        return list(chunk_texts(tokenizer, _pretraining_texts(path, converter), max_length))
    options = ChatOptions.of(config)
    return [
        example
        for record in converter.records(iter_records(path))
        for example in render_examples(
            tokenizer,
            record.data,
            config.task_type,
            max_length=max_length,
            source=record.source,
            line=record.line,
            options=options,
        )
    ]


def _pretraining_texts(path: str, converter: Converter) -> Iterator[str]:
    """Documents for continued pretraining: ``.txt`` files, or the ``text`` field of records."""
    if not looks_like_record_source(path):
        for _source, text in iter_text_files(path):
            yield text
        return
    for record in converter.records(iter_records(path)):
        value = record.data.get("text")
        if not isinstance(value, str):
            raise DataError(
                "a continued-pretraining record needs a string 'text'",
                source=record.source,
                line=record.line,
                field="text",
                value=value,
                fix="use a folder of .txt files or records with a 'text' field",
            )
        yield value
