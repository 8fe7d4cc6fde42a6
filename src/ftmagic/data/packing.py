"""Pack tokenized examples into fixed-length rows whose examples cannot see each other.

Rows are filled best-fit-decreasing, so padding stays near zero. Each example's ``position_ids``
restart at 0; with no attention mask and no KV cache, transformers reads those restarts as sequence
boundaries (``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask.
The row length is matched to the data (the shortest length from the longest example up that packs
with little padding) rather than to the whole batch, because without a variable-length attention
kernel a long row makes CPU attention quadratic in the batch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ftmagic.data.render import TokenizedExample

IGNORE_INDEX = -100


def pack(lengths: Sequence[int], pack_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``pack_length`` tokens, best-fit decreasing.

    Deterministic: ties keep the examples' order. Examples longer than ``pack_length`` must have
    been truncated before, so they are an error here.

    >>> pack([5, 4, 3, 3, 2, 1], 8)
    [[0, 2], [1, 3, 5], [4]]
    """
    if pack_length < 1:
        raise ValueError(f"pack_length must be positive, got {pack_length}")
    too_long = [i for i, n in enumerate(lengths) if n > pack_length]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"example {i} has {lengths[i]} tokens, more than pack_length {pack_length}; "
            "truncate examples to the context length before packing"
        )
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    # (room left, row number), sorted: the first entry with room >= n is the best fit.
    room: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            left, row = room.pop(at)
        else:
            left, row = pack_length, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(room, (left - n, row))
    return rows


PADDING_TARGET = 0.015
"""The padding share ``auto_pack_length`` aims under (a constant)."""

SAMPLE_LIMIT = 20_000
"""At most this many lengths (an even sample) are packed to compare row lengths (a constant)."""


def auto_pack_length(lengths: Sequence[int], context_length: int, multiple: int = 8) -> int:
    """The shortest row length, a ``multiple`` from the longest example up to twice that (capped
    at ``context_length``), whose best-fit-decreasing packing pads under ``PADDING_TARGET``; the
    least padded candidate when none does.

    Rows just long enough for the longest example waste the most: every row keeps a gap smaller
    than the shortest example, and a few row lengths happen to fit the length mix badly. Rows much
    longer than needed make attention dearer without a variable-length kernel, hence the search
    from the shortest up.

    >>> auto_pack_length([10, 130, 7], 2048)  # [130, 10, 7] in one row of 152
    152
    >>> auto_pack_length([100, 60, 60], 2048)
    120
    """
    if not lengths:
        raise ValueError("no examples to pack")
    sample = list(lengths)[:: max(1, len(lengths) // SAMPLE_LIMIT)]
    shortest = min(context_length, max(multiple, math.ceil(max(lengths) / multiple) * multiple))
    longest = min(context_length, 2 * shortest)
    best, best_padding = shortest, 1.0
    for candidate in range(shortest, longest + 1, multiple):
        padding = padding_fraction(pack(sample, candidate), sample, candidate)
        if padding < PADDING_TARGET:
            return candidate
        if padding < best_padding:
            best, best_padding = candidate, padding
    return best


def padding_fraction(
    rows: Sequence[Sequence[int]], lengths: Sequence[int], pack_length: int
) -> float:
    """Share of the packed rows' slots that are padding."""
    if not rows:
        return 0.0
    real = sum(lengths[i] for row in rows for i in row)
    return 1.0 - real / (len(rows) * pack_length)


def collate(
    examples: Sequence[TokenizedExample],
    rows: Sequence[Sequence[int]],
    pack_length: int,
    pad_id: int,
) -> dict[str, Any]:
    """Tensors for packed rows: ``input_ids``, ``labels`` and ``position_ids`` of shape
    ``[len(rows), pack_length]``, plus ``num_real_tokens`` and ``num_trained_tokens``.

    Labels are -100 on untrained tokens, on padding, and on the first token of every example, so no
    target is predicted across an example boundary. Position ids restart at 0 for every example and
    for the padding. Call the model with ``position_ids``, no ``attention_mask`` and
    ``use_cache=False`` so that transformers keeps the examples apart.
    """
    import torch

    shape = (len(rows), pack_length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    real = 0
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            if offset + len(examples[i].input_ids) > pack_length:
                raise ValueError(f"row {r} holds more than pack_length {pack_length} tokens")
            offset += _place(examples[i], input_ids[r], labels[r], position_ids[r], offset)
        position_ids[r, offset:] = torch.arange(pack_length - offset)
        real += offset
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_real_tokens": real,
        "num_trained_tokens": int((labels != IGNORE_INDEX).sum()),
    }


def _place(
    example: TokenizedExample,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor,
    offset: int,
) -> int:
    import torch

    n = len(example.input_ids)
    if n == 0:
        return 0
    ids = torch.tensor(example.input_ids, dtype=torch.long)
    trained = torch.tensor(example.trained, dtype=torch.bool)
    trained[0] = False  # its target would be predicted from the previous example
    input_ids[offset : offset + n] = ids
    labels[offset : offset + n] = torch.where(trained, ids, IGNORE_INDEX)
    position_ids[offset : offset + n] = torch.arange(n)
    return n


def collate_padded(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, Any]:
    """One example per row, right-padded to the longest: ``input_ids``, ``labels``,
    ``attention_mask``, plus ``num_real_tokens`` and ``num_trained_tokens``. The unpacked
    baseline."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    positions = torch.zeros(width, dtype=torch.long)
    for r, example in enumerate(examples):
        n = _place(example, input_ids[r], labels[r], positions, 0)
        attention_mask[r, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "num_real_tokens": int(attention_mask.sum()),
        "num_trained_tokens": int((labels != IGNORE_INDEX).sum()),
    }
