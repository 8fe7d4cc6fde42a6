"""Masks for templates that rewrite history (Qwen3, the thinking-only Qwen template, the
DeepSeek-R1 distills), for both shapes of reasoning data, the chat_turns modes, the whole end of
turn (Command R7B's two tokens), stop tokens and the training-vs-serving check.

Each template is the published one (``tests/fixtures/templates``) on the tiny tokenizer with the
family's special tokens, so the spans below are exactly what a real model of the family trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from archs import save_family_model, tokenizer_for
from ftmagic.config import RunConfig
from ftmagic.data.preview import preview
from ftmagic.data.render import ChatOptions, chat_layout, render, render_examples
from ftmagic.data.templates import (
    add_stop_token,
    end_of_turn_token,
    missing_stop_token,
    template_family,
)
from ftmagic.data.validate import validate
from ftmagic.errors import DataError
from test_masks import trained_runs

QUESTION_1 = {"role": "user", "content": "What is 2+2?"}
QUESTION_2 = {"role": "user", "content": "And 3+3?"}
INLINE = [
    QUESTION_1,
    {"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\nFour."},
    QUESTION_2,
    {"role": "assistant", "content": "<think>\nAdd three and three.\n</think>\n\nSix."},
]
FIELD = [
    QUESTION_1,
    {"role": "assistant", "content": "Four.", "reasoning_content": "Add two and two."},
    QUESTION_2,
    {"role": "assistant", "content": "Six.", "reasoning_content": "Add three and three."},
]
THINKING = [{**m, "thinking": m.pop("reasoning_content")} if "reasoning_content" in m else m
            for m in (dict(m) for m in FIELD)]  # fmt: skip
SHAPES = {"inline": INLINE, "reasoning_content": FIELD, "thinking": THINKING}


def runs(name: str, messages: list[dict[str, Any]], turns: str = "all") -> list[list[str]]:
    tokenizer = tokenizer_for(name)
    options = ChatOptions(turns=turns)
    examples = render_examples(
        tokenizer, {"messages": messages}, "CHAT_COMPLETION", options=options
    )
    return [trained_runs(tokenizer, e) for e in examples]


QWEN3_LAST = "<think>\nAdd three and three.\n</think>\n\nSix.<|im_end|>"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qwen3_trains_the_rendered_history_and_the_last_turn_with_its_reasoning(
    shape: str,
) -> None:
    # Qwen3 drops the reasoning of the turn before the last question: what it renders is trained.
    assert runs("qwen3", SHAPES[shape]) == [["Four.<|im_end|>", QWEN3_LAST]]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qwen3_split_trains_every_turns_reasoning(shape: str) -> None:
    assert runs("qwen3", SHAPES[shape], "split") == [
        ["<think>\nAdd two and two.\n</think>\n\nFour.<|im_end|>"],
        [QWEN3_LAST],
    ]
    assert runs("qwen3", SHAPES[shape], "last") == [[QWEN3_LAST]]


def test_qwen3_final_turn_without_reasoning_trains_the_empty_think_block() -> None:
    messages = [QUESTION_1, {"role": "assistant", "content": "Four."}]
    assert runs("qwen3", messages) == [["<think>\n\n</think>\n\nFour.<|im_end|>"]]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_thinking_template_prompt_opens_the_think_block(shape: str) -> None:
    # The generation prompt ends with "<think>\n": it is prompt, not trained.
    assert runs("qwen3-thinking", SHAPES[shape]) == [
        ["Four.<|im_end|>", "Add three and three.\n</think>\n\nSix.<|im_end|>"]
    ]
    assert runs("qwen3-thinking", SHAPES[shape], "split")[0] == [
        "Add two and two.\n</think>\n\nFour.<|im_end|>"
    ]


def test_thinking_template_last_turn_follows_the_inference_prompt_exactly() -> None:
    tokenizer = tokenizer_for("qwen3-thinking")
    example = render(tokenizer, {"messages": INLINE}, "CHAT_COMPLETION")
    prompt = tokenizer.apply_chat_template(INLINE[:3], tokenize=False, add_generation_prompt=True)
    first_last = example.trained.index(True, len(tokenizer(prompt)["input_ids"]) - 1)
    assert tokenizer.decode(example.input_ids[:first_last]) == prompt


@pytest.mark.parametrize("shape", list(SHAPES))
def test_r1_distill_keeps_the_last_reasoning_it_drops_from_every_turn(shape: str) -> None:
    last = "Add three and three.\n</think>\n\nSix.<｜end▁of▁sentence｜>"
    got = runs("r1-distill", SHAPES[shape])
    # The template keeps what follows </think> as it is (with its newlines) in history.
    earlier = "\n\nFour." if shape == "inline" else "Four."
    assert got == [[f"{earlier}<｜end▁of▁sentence｜>", last]]
    assert runs("r1-distill", SHAPES[shape], "split")[0] == [
        "Add two and two.\n</think>\n\nFour.<｜end▁of▁sentence｜>"
    ]


def test_layout_reports_what_the_template_dropped_or_rewrote() -> None:
    qwen3 = chat_layout(tokenizer_for("qwen3"), FIELD)
    assert qwen3.notes == [
        "messages[1]: the template drops this turn's reasoning; the answer is trained without "
        "it (train every turn's reasoning with chat_turns: split)"
    ]
    assert qwen3.serving_diff is None
    r1 = chat_layout(tokenizer_for("r1-distill"), INLINE)
    assert any("drops the reasoning of the last assistant turn" in n for n in r1.notes)
    assert r1.serving_diff is not None and "before messages[1]" in r1.serving_diff
    assert "<think>" in r1.serving_diff
    llama = chat_layout(tokenizer_for("llama3"), FIELD)
    assert llama.notes[0].startswith("messages[3]: the template does not read a reasoning field")
    assert llama.serving_diff is None


def test_a_lost_user_message_is_still_an_error() -> None:
    # Mistral's template refuses roles it does not know; a template that silently drops a user
    # message is refused by the content check.
    tokenizer = tokenizer_for("qwen3")
    tokenizer.chat_template = tokenizer.chat_template.replace(
        '{%- if (message.role == "user")', '{%- if (message.role == "nobody")'
    )
    with pytest.raises(DataError, match="drops this user message") as info:
        render(tokenizer, {"messages": INLINE}, "CHAT_COMPLETION", line=4)
    assert info.value.field == "messages[0].content" and info.value.line == 4


def test_command_r7b_trains_both_end_of_turn_tokens() -> None:
    tokenizer = tokenizer_for("command-r7b")
    messages = [
        {"role": "user", "content": "Say OK."},
        {"role": "assistant", "content": "OK"},
        {"role": "user", "content": "Again."},
        {"role": "assistant", "content": "OK again"},
    ]
    example = render(tokenizer, {"messages": messages}, "CHAT_COMPLETION")
    assert trained_runs(tokenizer, example) == [
        "<|START_RESPONSE|>OK<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
        "<|START_RESPONSE|>OK again<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    ]
    assert end_of_turn_token(tokenizer) == "<|END_OF_TURN_TOKEN|>" == tokenizer.eos_token


def test_stop_token_check_fixes_the_generation_config() -> None:
    from transformers import GenerationConfig

    tokenizer = tokenizer_for("gemma2")  # eos is <eos>; turns end with <end_of_turn>
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    assert missing_stop_token(tokenizer, config) == ("<end_of_turn>", end)

    class Model:
        generation_config = config

    message = add_stop_token(Model(), tokenizer)
    assert message is not None and "<end_of_turn>" in message
    assert config.eos_token_id == [tokenizer.eos_token_id, end]
    assert missing_stop_token(tokenizer, config) is None
    assert add_stop_token(Model(), tokenizer) is None
    llama = tokenizer_for("llama3")
    assert missing_stop_token(llama, GenerationConfig(eos_token_id=llama.eos_token_id)) is None


def test_gemma2_system_message_error_and_fold_switch() -> None:
    tokenizer = tokenizer_for("gemma2")
    messages = [{"role": "system", "content": "Be brief."}, *INLINE[:2]]
    with pytest.raises(DataError) as info:
        render(tokenizer, {"messages": messages}, "CHAT_COMPLETION", source="d.jsonl", line=2)
    assert "the Gemma chat template rejects system messages" in str(info.value)
    assert info.value.fix is not None and "fold_system_prompt: true" in info.value.fix
    options = ChatOptions(fold_system_prompt=True)
    example = render(tokenizer, {"messages": messages}, "CHAT_COMPLETION", options=options)
    assert "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>" in tokenizer.decode(
        example.input_ids
    )
    assert trained_runs(tokenizer, example) == [
        "<think>\nAdd two and two.\n</think>\n\nFour.<end_of_turn>"
    ]


def test_template_families_are_named() -> None:
    names = {
        "llama3": "Llama 3",
        "qwen2.5": "ChatML (Qwen2.5, SmolLM)",
        "qwen3": "Qwen3",
        "gemma2": "Gemma",
        "phi4": "Phi-4",
        "mistral": "Mistral / Llama 2",
        "granite": "Granite",
        "olmo2": "OLMo 2 / Tulu",
        "smollm3": "SmolLM3",
        "r1-distill": "DeepSeek-R1",
        "command-r7b": "Command R",
    }
    assert {n: template_family(tokenizer_for(n)) for n in names} == names


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_family_model("qwen3", tmp_path_factory.mktemp("qwen3"))


def test_preview_shows_dropped_reasoning_and_split_turns(qwen3_dir: Path) -> None:
    shown = preview(str(qwen3_dir), {"messages": FIELD})
    assert "note: messages[1]: the template drops this turn's reasoning" in str(shown)
    assert shown.to_dict()["notes"] == shown.notes and len(shown.notes) == 1
    assert "drops this turn" in shown._repr_html_()
    first = preview(str(qwen3_dir), {"messages": FIELD}, chat_turns="split", turn=0)
    trained = "".join(t.text for t in first.tokens if t.trained)
    assert trained == "<think>\nAdd two and two.\n</think>\n\nFour.<|im_end|>"
    assert first.notes == []


def test_validate_warns_on_empty_answers_and_counts_split_examples(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"messages": INLINE}, {"messages": [QUESTION_1, {"role": "assistant", "content": ""}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig(model=str(qwen3_dir), train_data_path=str(data), chat_turns="split")
    report = validate(config)
    assert report.ok, report.errors
    assert report.num_examples == 3  # two turns of line 1, one of line 2
    tokenizer = tokenizer_for("qwen3")
    options = ChatOptions(turns="split")
    expected = [
        e.num_trained
        for r in rows
        for e in render_examples(tokenizer, r, "CHAT_COMPLETION", options=options)
    ]
    assert report.trained_tokens == sum(expected)
    empty = [w for w in report.warnings if "assistant message is empty" in w]
    assert empty == [
        f"{data}:2 messages[1].content: the assistant message is empty, so only its "
        "end-of-turn token is trained (fill it in or remove the turn)"
    ]
