"""The record rules both validation and render read: the helpers, render's requirements (with
their messages), and that a record render refuses is always one the full rules refuse too."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftmagic.data.render import trained_flags
from ftmagic.data.rules import (
    answer_field,
    check_record,
    content_ok,
    has_tool_calls,
    is_trained,
    reasoning_of,
    require_instruction,
    require_messages,
    require_text,
)
from ftmagic.errors import DataError

CALL = {"type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "4"}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("message", "ok"),
    [
        (ANSWER, True),
        ({"role": "user", "content": ""}, True),
        ({"role": "assistant", "content": None, "tool_calls": [CALL]}, True),
        ({"role": "assistant", "tool_calls": [CALL]}, True),
        ({"role": "assistant", "content": None, "tool_calls": []}, False),
        ({"role": "user", "content": None, "tool_calls": [CALL]}, False),
        ({"role": "user"}, False),
        ({"role": "user", "content": ["a"]}, False),
    ],
)
def test_content_ok(message: dict[str, Any], ok: bool) -> None:
    assert content_ok(message) is ok


@pytest.mark.timeout(10)
def test_tool_calls_weights_and_answer_fields() -> None:
    assert has_tool_calls({"tool_calls": [CALL]}) and not has_tool_calls({"tool_calls": []})
    assert is_trained(ANSWER) and is_trained({**ANSWER, "weight": 1})
    assert not is_trained({**ANSWER, "weight": 0})
    assert answer_field({"prompt": "p", "response": "r", "completion": "c"}) == "response"
    assert answer_field({"prompt": "p", "completion": "c"}) == "completion"
    assert answer_field({"prompt": "p"}) is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("message", "parts"),
    [
        ({"content": " 4 "}, ("", "4")),
        ({"content": "4", "reasoning_content": " add "}, ("add", "4")),
        ({"content": "4", "thinking": "add"}, ("add", "4")),
        ({"content": "4", "reasoning_content": "  ", "thinking": "add"}, ("add", "4")),
        ({"content": "<think>\nadd\n</think>\n\n4"}, ("add", "4")),
        ({"content": "add</think>4"}, ("add", "4")),
        ({"content": None, "tool_calls": [CALL]}, ("", "")),
        ({"content": 5}, ("", "")),
    ],
)
def test_reasoning_of(message: dict[str, Any], parts: tuple[str, str]) -> None:
    assert reasoning_of(message) == parts


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("data", "field", "rule"),
    [
        ({"messages": []}, "messages", "a chat record needs a non-empty 'messages' list"),
        ("text", "messages", "a chat record needs a non-empty 'messages' list"),
        ({"messages": [USER, 5]}, "messages[1]", "each message needs a string 'role'"),
        ({"messages": [{"role": 1, "content": "a"}]}, "messages[0]", "a string 'role'"),
        ({"messages": [USER, {"role": "assistant"}]}, "messages[1]", "a string 'content'"),
        ({"messages": [USER]}, "messages", "a chat record needs at least one assistant message"),
    ],
)
def test_require_messages_names_the_first_problem(data: Any, field: str, rule: str) -> None:
    with pytest.raises(DataError, match=rule) as info:
        require_messages(data, source="d.jsonl", line=3)
    assert (info.value.field, info.value.source, info.value.line) == (field, "d.jsonl", 3)


@pytest.mark.timeout(10)
def test_require_messages_leaves_order_and_roles_to_the_template() -> None:
    messages = [USER, USER, {"role": "narrator", "content": "x"}, ANSWER, USER]
    assert require_messages({"messages": messages}) is messages
    call = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert require_messages({"messages": [USER, call]})[1] is call


@pytest.mark.timeout(10)
def test_require_instruction_and_text() -> None:
    assert require_instruction({"prompt": "p", "response": "r"}) == ("p", "r")
    assert require_instruction({"prompt": "p", "completion": "c"}) == ("p", "c")
    assert require_instruction({"prompt": "p", "response": "r", "completion": 1}) == ("p", "r")
    for data, field in [
        ({"prompt": 1, "response": "r"}, "prompt"),
        ({"prompt": "p", "response": None}, "response"),
        ({"prompt": "p"}, "completion"),
        ("p", "prompt"),
    ]:
        with pytest.raises(DataError, match=f"an instruction record needs a string '{field}'"):
            require_instruction(data)
    assert require_text({"text": "t"}) == "t"
    with pytest.raises(DataError, match="a pretraining record needs a string 'text'") as info:
        require_text({"text": 3}, source="d.jsonl", line=2)
    assert (info.value.field, info.value.value, info.value.line) == ("text", 3, 2)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6))
MESSAGE = st.one_of(
    SCALARS,
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), SCALARS),
            "content": st.one_of(st.text(max_size=6), SCALARS, st.lists(SCALARS, max_size=2)),
            "tool_calls": st.one_of(st.just([CALL]), st.just([]), SCALARS),
            "weight": st.sampled_from([0, 1, 2]),
        },
    ),
)
RECORD = st.one_of(
    SCALARS,
    st.fixed_dictionaries({}, optional={"messages": st.one_of(st.lists(MESSAGE, max_size=5))}),
    st.fixed_dictionaries(
        {}, optional={"prompt": SCALARS, "response": SCALARS, "completion": SCALARS}
    ),
    st.fixed_dictionaries({}, optional={"text": SCALARS}),
)
REQUIRE = {
    "CHAT_COMPLETION": require_messages,
    "INSTRUCTION_FINETUNE": require_instruction,
    "CONTINUED_PRETRAIN": require_text,
}


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None)
@given(RECORD, st.sampled_from(sorted(REQUIRE)))
def test_what_render_refuses_the_rules_refuse(data: Any, task_type: str) -> None:
    """render's requirements are a part of the full rules: validation never passes a record
    that training would then refuse for its shape."""
    try:
        REQUIRE[task_type](data)
    except DataError:
        assert check_record(data, task_type)


SPAN = st.tuples(st.integers(0, 40), st.integers(0, 8)).map(lambda s: (s[0], s[0] + s[1]))


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.lists(SPAN, max_size=20), st.lists(SPAN, max_size=4))
def test_trained_flags_are_the_overlaps(offsets: list[tuple[int, int]], spans: Any) -> None:
    spans = sorted(spans) if len(spans) % 2 else spans  # in order and apart, or not
    expected = [any(s < se and ss < e for ss, se in spans) for s, e in offsets]
    assert trained_flags(offsets, spans) == expected
