"""The training loss without the full-vocabulary logits of a whole micro-batch.

A packed row of 4096 tokens under a 128k vocabulary has 512M logits: 2 GiB in fp32, more than
the rest of a small model's activations, and the cross-entropy's softmax and gradient double it.
``chunked_loss`` makes the model's output layer return the summed cross-entropy instead of the
logits, computed ``chunk_tokens`` trained positions at a time; each chunk is recomputed in the
backward pass (activation checkpointing), so only one chunk's logits exist at any moment. Positions
without a label never reach the output layer at all.

The output layer runs inside the model's own forward, so DDP's and FSDP2's hooks see the usual
call and the loss is the same sum ``F.cross_entropy(logits, labels, reduction="sum")`` gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ftmagic.train.distributed import unwrap

IGNORE_INDEX = -100

# Output-layer post-processing that the chunked path would skip: models that use it keep the
# plain path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def supports_chunking(model: Any) -> bool:
    """Whether ``model``'s logits are its output layer's output, untouched (most causal LMs)."""
    config = getattr(model, "config", None)
    if config is None or model.get_output_embeddings() is None:
        return False
    return all(getattr(config, name, None) in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


def chunked_cross_entropy_sum(
    head: Any, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Sum of cross-entropies of next-token predictions, ``chunk_tokens`` positions at a time.

    ``hidden`` is ``[batch, time, width]`` (the output layer's input), ``labels`` ``[batch, time]``
    unshifted, as for the model's own loss.
    """
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep)
    targets = targets.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    # At least one (maybe empty) chunk, so the output layer joins the backward pass even for a
    # micro-batch without labels (DDP and FSDP2 expect every parameter to get a gradient).
    for start in range(0, max(1, len(keep)), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        total = total + checkpoint(
            _chunk_loss, head, states[part], targets[part], use_reentrant=False
        )
    return total


def _chunk_loss(head: Any, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(states).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


@contextlib.contextmanager
def chunked_loss(model: Any, labels: torch.Tensor, chunk_tokens: int) -> Iterator[None]:
    """Within the block, ``model(...).logits`` is the summed loss over ``labels`` (a 0-d tensor).

    The output layer's ``forward`` is swapped on the instance only, so the weights' names (and so
    checkpoints) stay as they are; generation outside the block sees plain logits.
    """
    head = model.get_output_embeddings()
    own = head.__dict__.get("forward")  # an instance-level forward (hooks) to put back
    plain = head.forward

    def loss_forward(hidden: torch.Tensor) -> torch.Tensor:
        return chunked_cross_entropy_sum(plain, hidden, labels, chunk_tokens)

    head.forward = loss_forward
    try:
        yield
    finally:
        if own is not None:
            head.forward = own
        else:
            del head.forward


def loss_sum(model: Any, batch: dict[str, Any], chunk_tokens: int = 0) -> torch.Tensor:
    """Sum of the token cross-entropies over the trained labels of ``batch``.

    Computed from the logits (not the model's own mean loss) so that the caller decides the
    normaliser. ``use_cache=False`` makes transformers honour the example boundaries that the
    packed ``position_ids`` mark. With ``chunk_tokens`` the full-vocabulary logits of the whole
    micro-batch never exist: the output layer computes the loss that many positions at a time.
    """
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    for name in ("position_ids", "attention_mask"):
        if batch.get(name) is not None:
            inputs[name] = batch[name]
    if chunk_tokens and supports_chunking(unwrap(model)):
        with chunked_loss(unwrap(model), batch["labels"], chunk_tokens):
            return model(**inputs).logits  # type: ignore[no-any-return]
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
