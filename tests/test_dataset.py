"""Loading a run's data for the trainer: the real readers, rendering, truncation and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmagic.catalog import resolve_model
from ftmagic.config import RunConfig
from ftmagic.data.dataset import effective_context_length, load_examples
from ftmagic.data.render import render
from ftmagic.errors import DataError
from ftmagic.models.loading import load_tokenizer

CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}."},
        ]
    }
    for i in range(5)
]


def write_jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_chat_examples_match_render_with_source_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", CHATS)
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=path)
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    examples = load_examples(config, tokenizer)
    assert len(examples) == 5
    for line, (example, chat) in enumerate(zip(examples, CHATS, strict=True), start=1):
        assert example.source is not None and example.source.endswith("train.jsonl")
        assert example.line == line
        assert example.input_ids == render(tokenizer, chat, "CHAT_COMPLETION").input_ids
        assert example.num_trained > 0 and not example.truncated


def test_eval_split_is_empty_without_eval_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", CHATS)
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=path)
    assert load_examples(config, load_tokenizer("ftmagic/tiny-random-chat"), split="eval") == []
    evals = write_jsonl(tmp_path / "eval.jsonl", CHATS[:2])
    config = config.replace(eval_data_path=evals)
    assert len(load_examples(config, load_tokenizer("ftmagic/tiny-random-chat"), split="eval")) == 2
    with pytest.raises(ValueError, match="split"):
        load_examples(config, load_tokenizer("ftmagic/tiny-random-chat"), split="test")


def test_context_length_truncates(tmp_path: Path) -> None:
    long_chat = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "word " * 200},
        ]
    }
    path = write_jsonl(tmp_path / "train.jsonl", [long_chat])
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=path, context_length=64)
    [example] = load_examples(config, load_tokenizer("ftmagic/tiny-random-chat"))
    assert example.truncated and len(example) == 64


def test_first_bad_record_raises_with_its_line(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "user", "content": "no answer"}]}
    path = write_jsonl(tmp_path / "train.jsonl", [CHATS[0], CHATS[1], bad])
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path=path)
    with pytest.raises(DataError) as info:
        load_examples(config, load_tokenizer("ftmagic/tiny-random-chat"))
    assert info.value.line == 3 and "assistant" in str(info.value)


def test_instruction_records(tmp_path: Path) -> None:
    rows = [{"prompt": "Capital of France?\n", "response": "Paris"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    config = RunConfig(
        model="ftmagic/tiny-random-chat", train_data_path=path, task_type="INSTRUCTION_FINETUNE"
    )
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    [example] = load_examples(config, tokenizer)
    trained = [t for t, keep in zip(example.input_ids, example.trained, strict=True) if keep]
    assert tokenizer.decode(trained) == "Paris<|eot_id|>"


def test_continued_pretraining_folder_is_chunked(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("The river runs to the sea. " * 40, encoding="utf-8")
    (folder / "b.txt").write_text("Bread needs flour, water and time. " * 30, encoding="utf-8")
    config = RunConfig(
        model="ftmagic/tiny-random-base",
        train_data_path=str(folder),
        task_type="CONTINUED_PRETRAIN",
        context_length=128,
    )
    tokenizer = load_tokenizer("ftmagic/tiny-random-base")
    chunks = load_examples(config, tokenizer)
    assert len(chunks) >= 3
    assert all(len(c) == 128 for c in chunks[:-1])
    assert all(all(c.trained) for c in chunks)
    flat = [t for c in chunks for t in c.input_ids]
    assert flat.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(flat).startswith("The river runs to the sea.")


def test_continued_pretraining_from_records_needs_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one doc"}, {"body": "oops"}])
    config = RunConfig(
        model="ftmagic/tiny-random-base", train_data_path=path, task_type="CONTINUED_PRETRAIN"
    )
    with pytest.raises(DataError) as info:
        load_examples(config, load_tokenizer("ftmagic/tiny-random-base"))
    assert info.value.line == 2 and info.value.field == "text"


def test_effective_context_length() -> None:
    config = RunConfig(model="ftmagic/tiny-random-chat", train_data_path="x.jsonl")
    assert effective_context_length(config) == 2048
    assert effective_context_length(config.replace(context_length=512)) == 512
    llama = resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    assert effective_context_length(config, llama) == 131072
