"""The token-level preview: same ids and mask as training, roles, text and HTML views."""

from __future__ import annotations

import html
import json
import re

import pytest

import ftmagic
from ftmagic.data.preview import Preview, preview
from ftmagic.data.render import render
from ftmagic.errors import DataError
from ftmagic.models.loading import load_tokenizer

CHAT = {
    "messages": [
        {"role": "system", "content": "Answer in <b>bold</b> & briefly."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "Fine."},
        {"role": "assistant", "content": "Good."},
    ]
}


def test_preview_matches_render_and_splits_counts_by_role() -> None:
    shown = preview("ftmagic/tiny-random-chat", CHAT)
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    example = render(tokenizer, CHAT, "CHAT_COMPLETION")
    assert [t.id for t in shown.tokens] == example.input_ids
    assert [t.trained for t in shown.tokens] == example.trained
    assert shown.num_tokens == len(example) and shown.num_trained == example.num_trained
    assert "".join(t.text for t in shown.tokens) == tokenizer.apply_chat_template(
        CHAT["messages"], tokenize=False
    )
    assert shown.trained_by_role == {"assistant": example.num_trained}
    assert set(shown.untrained_by_role) == {"template", "system", "user"}
    assert sum(shown.untrained_by_role.values()) == len(example) - example.num_trained
    user_text = "".join(t.text for t in shown.tokens if t.role == "user")
    assert user_text == "Hi thereFine."
    assert not shown.truncated and shown.context_length == 2048


def test_text_view_marks_trained_runs() -> None:
    text = str(preview("ftmagic/tiny-random-chat", CHAT))
    assert re.findall(r"\[\[(.*?)\]\]", text, flags=re.S) == [
        "Hello! How are you?<|eot_id|>",
        "Good.<|eot_id|>",
    ]
    assert text.splitlines()[0].startswith("ftmagic/tiny-random-chat · CHAT_COMPLETION · ")


def test_html_view_escapes_and_marks_tokens() -> None:
    shown = preview("ftmagic/tiny-random-chat", CHAT)
    page = shown._repr_html_()
    assert "<b>" not in page and "</b>" not in page
    inner = re.findall(r"<span class='ftmagic-token [^>]*>(.*?)</span>", page, flags=re.S)
    assert "&lt;" in inner and "&lt;|eot_id|&gt;" in inner
    text = "".join(html.unescape(t).replace("↵\n", "\n") for t in inner).replace("\u200b", "")
    assert text == "".join(t.text for t in shown.tokens)
    spans = re.findall(r"<span class='ftmagic-token (trained|ignored)' title=\"id (\d+) ", page)
    assert len(spans) == shown.num_tokens
    assert [int(i) for _, i in spans] == [t.id for t in shown.tokens]
    assert [s == "trained" for s, _ in spans] == [t.trained for t in shown.tokens]
    assert page.count("background:#b7eb8f") == shown.num_trained + 1  # plus the legend


def test_json_string_and_dict_give_the_same_preview() -> None:
    from_text = preview("ftmagic/tiny-random-chatml", json.dumps(CHAT))
    from_dict = preview("ftmagic/tiny-random-chatml", CHAT)
    assert from_text.to_dict() == from_dict.to_dict()
    data = from_dict.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["num_trained"] == from_dict.num_trained
    assert data["tokens"][0] == {
        "text": "<|im_start|>",
        "id": from_dict.tokens[0].id,
        "trained": False,
        "role": "template",
    }


def test_context_length_truncates_preview() -> None:
    shown = preview("ftmagic/tiny-random-chat", CHAT, context_length=60)
    assert shown.truncated and shown.num_tokens == 60
    assert "truncated to 60 tokens" in str(shown)


def test_instruction_and_pretraining_roles() -> None:
    shown = preview(
        "ftmagic/tiny-random-chat",
        {"prompt": "Capital of France?\n", "response": "Paris"},
        task_type="INSTRUCTION_FINETUNE",
    )
    assert set(shown.trained_by_role) == {"response"}
    assert shown.untrained_by_role["prompt"] > 0
    assert shown.tokens[-1].text == "<|eot_id|>" and shown.tokens[-1].trained
    text = preview("ftmagic/tiny-random-base", "Plain words here.", task_type="CONTINUED_PRETRAIN")
    assert text.num_trained == text.num_tokens
    assert "".join(t.text for t in text.tokens) == "Plain words here.<|end_of_text|>"


def test_bad_examples_are_data_errors() -> None:
    with pytest.raises(DataError, match="not valid JSON"):
        preview("ftmagic/tiny-random-chat", "{not json")
    with pytest.raises(DataError, match="no assistant message"):
        preview("ftmagic/tiny-random-chat", {"messages": [{"role": "user", "content": "hi"}]})
    assistant_first = {
        "messages": [
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "bye"},
        ]
    }
    with pytest.raises(DataError) as caught:
        preview("ftmagic/tiny-random-chat", assistant_first)
    assert caught.value.field is not None and caught.value.field.startswith("messages[0]")


def test_public_api_preview() -> None:
    shown = ftmagic.preview("ftmagic/tiny-random-chat", CHAT)
    assert isinstance(shown, Preview)
    assert shown.trained_by_role == preview("ftmagic/tiny-random-chat", CHAT).trained_by_role
