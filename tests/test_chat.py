"""Chat answers stream: the pieces come as the model generates them and make exactly the greedy
answer ``generate`` gives."""

from __future__ import annotations

from ftmagic.models.generation import generate
from ftmagic.models.loading import load_model, load_tokenizer
from ftmagic.ui.chat import stream_generate


def test_streamed_pieces_make_the_greedy_answer() -> None:
    model, tokenizer = (
        load_model("ftmagic/tiny-random-chat"),
        load_tokenizer("ftmagic/tiny-random-chat"),
    )
    prompt = [{"role": "user", "content": "For sepsis, guidelines favour tresbrolzepam."}]
    pieces = list(stream_generate(model, tokenizer, prompt, 24))
    whole = generate(model, tokenizer, prompt, max_new_tokens=24)
    assert "".join(pieces) == whole
    assert len(pieces) >= 2, pieces  # several updates, not one block at the end
