"""The first few valid training examples of a config, for the token previews of the magic and
panel."""

from __future__ import annotations

import itertools
from typing import Any

from ftmagic.config import RunConfig, TaskType

PREVIEW_CHARS = 4000  # a continued-pretraining preview shows the start of a file, not all of it


def first_examples(config: RunConfig, count: int) -> list[dict[str, Any] | str]:
    """Up to ``count`` examples from ``config.train_data_path``, read lazily (streaming readers)."""
    if count <= 0 or not config.train_data_path:
        return []
    if config.task_type == TaskType.CONTINUED_PRETRAIN:
        from ftmagic.data.readers import iter_text_files

        texts = itertools.islice(iter_text_files(config.train_data_path), count)
        return [text[:PREVIEW_CHARS] for _source, text in texts]
    from ftmagic.data.readers import iter_records
    from ftmagic.data.rules import check_record

    # Broken records are the validation report's business; the preview shows trainable ones.
    records = iter_records(config.train_data_path, errors=[])
    good = (r for r in records if not check_record(r.data, config.task_type, source=r.source))
    return [record.data for record in itertools.islice(good, count)]


def preview_example(config: RunConfig, example: dict[str, Any] | str) -> Any:
    """``ftmagic.preview`` of one example with the config's model, task type and context length."""
    import ftmagic

    return ftmagic.preview(
        config.model, example, task_type=config.task_type, context_length=config.context_length
    )
