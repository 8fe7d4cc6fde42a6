"""The built-in tiny models load like real ones and are the same bytes on every build."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftmagic.catalog import model_path
from ftmagic.tiny import TINY_MODELS, build_tiny_model, ensure_tiny_model, param_count

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How are you?"},
]


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    spec = TINY_MODELS["ftmagic/tiny-random-chat"]
    build_tiny_model(spec, tmp_path / "a")
    build_tiny_model(spec, tmp_path / "b")
    first, second = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(first)
    assert first == second


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_tiny_model(TINY_MODELS["ftmagic/tiny-random-chatml"], tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_chat_loads_with_auto_classes() -> None:
    path = model_path("ftmagic/tiny-random-chat")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == 625_280
    assert model.config.tie_word_embeddings
    assert param_count(TINY_MODELS["ftmagic/tiny-random-chat"]) == 625_280
    assert len(tokenizer) == model.config.vocab_size == 2048
    assert model.config.max_position_embeddings == 2048
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How are you?<|eot_id|>"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Special tokens are single tokens, and EOS is the end-of-turn token.
    assert ids.count(tokenizer.convert_tokens_to_ids("<|eot_id|>")) == 3
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer("hello")["input_ids"][0] == tokenizer.bos_token_id
    assert model_path("tiny-random-chat") == path  # the short display name works too


def test_tiny_chatml_template_and_generation() -> None:
    import torch

    path = model_path("ftmagic/tiny-random-chatml")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] >= ids.shape[1] + 1
    assert torch.equal(out[0, : ids.shape[1]], ids[0])
    assert tokenizer.eos_token == "<|im_end|>"


def test_cache_location_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTMAGIC_CACHE", str(tmp_path))
    folder = ensure_tiny_model("ftmagic/tiny-random-base")
    assert folder == tmp_path / "models" / "tiny-random-base-v2"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("ftmagic/tiny-random-base") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (folder / "chat_template.jinja").exists()
    # Nothing half-built is left next to it.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-random-base-v2"]


def _build_in_child(cache: str) -> str:
    os.environ["FTMAGIC_CACHE"] = cache
    folder = ensure_tiny_model("ftmagic/tiny-random-chatml")
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_concurrent_first_use_is_safe(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        hashes = pool.map(_build_in_child, [str(tmp_path)] * 2)
    assert hashes[0] == hashes[1]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-random-chatml-v2"]


def test_spec_and_corpus_fingerprint_matches_version() -> None:
    """Built models are cached by name and VERSION only: changing the corpus or a spec without
    bumping ``ftmagic.tiny.VERSION`` would leave stale models in users' caches."""
    from ftmagic.tiny import RANDOM_INIT, VERSION, corpus_text

    text = corpus_text() + repr(sorted(RANDOM_INIT.items()))
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    assert (VERSION, fingerprint) == (
        "v2",
        "de09248361b1ce58efa88731c349f03c1f9614a69ea3859648eadf6d63cc0486",
    ), "the tiny models changed: bump ftmagic.tiny.VERSION and update this fingerprint"
