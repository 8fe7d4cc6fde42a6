"""The chunked loss equals the full-logits loss (value and gradients) on packed rows."""

from __future__ import annotations

import pytest
import torch

from ftmagic.train.loss import chunked_loss, loss_sum, supports_chunking

VOCAB = 3001


def _model(**extra: float) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **extra,
    )
    return LlamaForCausalLM(config)


def _packed_batch() -> dict[str, torch.Tensor]:
    """Two packed rows of three and two examples, prompts untrained, a padded tail."""
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (2, 40), generator=gen)
    position_ids = torch.cat(
        [
            torch.cat([torch.arange(15), torch.arange(15), torch.arange(10)]),
            torch.cat([torch.arange(22), torch.arange(12), torch.arange(6)]),
        ]
    ).reshape(2, 40)
    labels = input_ids.clone()
    labels[0, :5] = -100
    labels[0, 15:20] = -100
    labels[1, 22:26] = -100
    labels[1, 34:] = -100  # padding
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def _loss_and_grads(chunk: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _model()
    loss = loss_sum(model, _packed_batch(), chunk)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 16, 1000])
def test_chunked_loss_and_gradients_equal_the_full_logits_ones(chunk: int) -> None:
    batch = _packed_batch()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    full, full_grads = _loss_and_grads(0)
    chunked, chunked_grads = _loss_and_grads(chunk)
    assert full.item() > 0.5 * trained * torch.log(torch.tensor(float(VOCAB))).item()
    # The per-token mean (what training reports) to 1e-5, the sum to float rounding.
    assert abs(chunked.item() - full.item()) / trained < 1e-5
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_micro_batch_without_labels_still_reaches_the_output_layer() -> None:
    model = _model()
    batch = _packed_batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss = loss_sum(model, batch, 8)
    loss.backward()
    assert loss.item() == 0.0
    grad = model.get_output_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) == 0.0


def test_the_output_layer_gives_logits_again_after_the_block() -> None:
    model = _model()
    batch = _packed_batch()
    with chunked_loss(model, batch["labels"], 8):
        inside = model(input_ids=batch["input_ids"]).logits
    assert inside.dim() == 0
    after = model(input_ids=batch["input_ids"]).logits
    assert after.shape == (2, 40, VOCAB)
    assert "forward" not in model.get_output_embeddings().__dict__


def test_models_that_transform_their_logits_keep_the_plain_loss() -> None:
    assert supports_chunking(_model())
    assert not supports_chunking(_model(final_logit_softcapping=30.0))
    capped = _model(final_logit_softcapping=30.0)
    batch = _packed_batch()
    # The plain path still runs for them: chunk_tokens is ignored.
    assert loss_sum(capped, batch, 8).item() == pytest.approx(loss_sum(capped, batch, 0).item())
