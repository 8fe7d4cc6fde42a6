"""TokenCounter's counts are render's: a table over the bundled datasets and every template in
tests/fixtures/templates (each chat-turn mode, with and without truncation), and the rendering
both share gives apply_chat_template's text."""

from __future__ import annotations

from typing import Any

import pytest

from archs import FAMILIES, TEMPLATE_ONLY, family, tokenizer_for
from ftmagic import examples
from ftmagic.data.counting import Counted, TokenCounter
from ftmagic.data.readers import Record
from ftmagic.data.render import (
    ChatOptions,
    chat_layout,
    example_records,
    prepare_messages,
    render,
    render_examples,
)
from ftmagic.errors import DataError
from ftmagic.models.loading import load_tokenizer

CHAT = "CHAT_COMPLETION"
INSTRUCTION = "INSTRUCTION_FINETUNE"
PRETRAIN = "CONTINUED_PRETRAIN"
OPTIONS = [
    ChatOptions(),
    ChatOptions(fold_system_prompt=True),
    ChatOptions(turns="last"),
    ChatOptions(turns="split"),
]
CONTEXTS = [None, 48]
# One family per template file in tests/fixtures/templates.
BY_TEMPLATE = {family(n).template: n for n in reversed([*FAMILIES, *TEMPLATE_ONLY])}
TOKENIZERS = sorted(BY_TEMPLATE.values())
# Every split of the bundled chat datasets; the large training splits are sampled.
STRIDES = {("chat", "train"): 20, ("chat", "eval"): 2, ("ner", "train"): 160, ("ner", "eval"): 10}
STRIDES[("ner", "test")] = 10


def bundled_chats() -> list[Record]:
    records = []
    for dataset in ("chat", "ner"):
        for split in examples.SPLITS[dataset]:
            rows = examples.load(dataset, split)[:: STRIDES.get((dataset, split), 1)]
            records += [Record(f"{dataset}/{split}", i, row) for i, row in enumerate(rows)]
    return records


def bundled_instructions() -> list[Record]:
    """The drug-name chats as prompt/response (and prompt/completion) records."""
    records = []
    for i, row in enumerate(examples.load("ner", "eval")):
        _, user, assistant = row["messages"]
        answer = "response" if i % 2 else "completion"
        data = {"prompt": f"{user['content']}\nDrugs: ", answer: assistant["content"]}
        records.append(Record("ner/eval", i, data))
    return records


def bundled_texts() -> list[Record]:
    rows = examples.load("pretrain")
    return [Record("pretrain", i, {"text": row["text"]}) for i, row in enumerate(rows)]


def render_counts(
    tokenizer: Any, record: Record, task_type: str, options: ChatOptions, context: int | None
) -> list[Counted | DataError]:
    """What render gives for the record: the full length and the trained tokens left within the
    context of each example, or render's error (one for the record when it makes no example)."""
    where: dict[str, Any] = {"source": record.source, "line": record.line, "options": options}
    try:
        whole = render_examples(tokenizer, record.data, task_type, **where)
    except DataError as err:
        return [err]
    counts: list[Counted | DataError] = []
    datas = example_records(record.data, task_type, options)
    for data, example in zip(datas, whole, strict=True):
        if context is None:
            counts.append(Counted(len(example), example.num_trained))
            continue
        try:
            kept = render(tokenizer, data, task_type, max_length=context, **where)
        except DataError as err:
            counts.append(err)
            continue
        counts.append(Counted(len(example), kept.num_trained))
    return counts


def as_rows(counts: list[Counted | DataError]) -> list[Any]:
    return [str(c) if isinstance(c, DataError) else tuple(c) for c in counts]


def assert_counts_are_renders(
    tokenizer: Any, records: list[Record], task_type: str, options: ChatOptions
) -> None:
    counter = TokenCounter(tokenizer, task_type, options)
    for context in CONTEXTS:
        expected = [
            c for r in records for c in render_counts(tokenizer, r, task_type, options, context)
        ]
        assert as_rows(counter.count_records(records, context)) == as_rows(expected), context


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_chat_counts_are_renders_for_every_template(name: str) -> None:
    tokenizer = tokenizer_for(name)
    records = bundled_chats()
    for options in OPTIONS:
        assert_counts_are_renders(tokenizer, records, CHAT, options)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", ["ftmagic/tiny-random-chat", "ftmagic/tiny-random-chatml"])
def test_chat_counts_are_renders_for_the_tiny_models(model: str) -> None:
    tokenizer = load_tokenizer(model)
    for options in OPTIONS:
        assert_counts_are_renders(tokenizer, bundled_chats(), CHAT, options)


@pytest.mark.timeout(120)
def test_instruction_and_text_counts_are_renders() -> None:
    # The family tokenizers differ in the BOS their plain encoding adds.
    tokenizers = [
        load_tokenizer("ftmagic/tiny-random-chat"),
        *(tokenizer_for(n) for n in TOKENIZERS),
    ]
    for tokenizer in tokenizers:
        assert_counts_are_renders(tokenizer, bundled_instructions(), INSTRUCTION, ChatOptions())
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    assert_counts_are_renders(tokenizer, bundled_texts(), PRETRAIN, ChatOptions())


@pytest.mark.timeout(60)
def test_a_record_render_refuses_gives_its_error_once() -> None:
    tokenizer = tokenizer_for("gemma2")  # its template rejects system messages
    system = {"role": "system", "content": "Be brief."}
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ]
    records = [
        Record("d.jsonl", 1, {"messages": turns}),
        Record("d.jsonl", 2, {"messages": [system, *turns]}),
        Record("d.jsonl", 3, {"messages": [turns[0]]}),
    ]
    counts = TokenCounter(tokenizer, CHAT, ChatOptions(turns="split")).count_records(records, None)
    assert [type(c).__name__ for c in counts] == ["Counted", "Counted", "DataError", "DataError"]
    assert "the Gemma chat template rejects system messages" in str(counts[2])
    assert "at least one assistant message" in str(counts[3])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_rendering_is_apply_chat_templates(name: str) -> None:
    tokenizer = tokenizer_for(name)
    for record in bundled_chats()[::4]:
        messages = record.data["messages"]
        if name == "gemma2":
            messages = [m for m in messages if m["role"] != "system"]
        expected = tokenizer.apply_chat_template(prepare_messages(messages), tokenize=False)
        assert chat_layout(tokenizer, messages).text == expected


@pytest.mark.timeout(60)
def test_messages_transformers_rewrites_are_rendered_by_apply_chat_template() -> None:
    """apply_chat_template drops None values and reads a ``reasoning`` field as the reasoning:
    such messages are rendered by it, not by the faster path for plain messages."""
    tokenizer = tokenizer_for("qwen3")
    question = {"role": "user", "content": "What is 2+2?"}
    answer = {"role": "assistant", "content": "4", "reasoning": "two and two", "name": None}
    text = chat_layout(tokenizer, [question, answer]).text
    assert text == tokenizer.apply_chat_template([question, answer], tokenize=False)
    assert "<think>\ntwo and two\n</think>" in text and "None" not in text
