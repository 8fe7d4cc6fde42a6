"""OpenAI fine-tuning records, faithfully: ``weight: 0`` turns are rendered but not trained,
``name`` reaches templates that read it (else one warning), and tools render with the model's
own template: the assistant's tool call is trained, the tool result never is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from archs import save_family_model, tokenizer_for
from ftmagic.config import RunConfig
from ftmagic.data.preview import preview
from ftmagic.data.render import render, template_reads_name
from ftmagic.data.rules import check_record
from ftmagic.data.validate import validate
from ftmagic.errors import DataError
from test_masks import trained_runs

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL_RECORD = {
    "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
        {"role": "assistant", "content": "It is sunny in Paris."},
    ],
}
WEIGHTED = {
    "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hello there, friend!", "weight": 0},
        {"role": "user", "content": "Shorter."},
        {"role": "assistant", "content": "Hi.", "weight": 1},
    ]
}
QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def chat(name: str, record: dict[str, Any]) -> list[str]:
    tokenizer = tokenizer_for(name)
    return trained_runs(tokenizer, render(tokenizer, record, "CHAT_COMPLETION", source="d.jsonl"))


def test_tool_call_trained_tool_result_and_tool_list_not() -> None:
    tokenizer = tokenizer_for("qwen2.5")
    example = render(tokenizer, TOOL_RECORD, "CHAT_COMPLETION")
    assert trained_runs(tokenizer, example) == [
        f"{QWEN_CALL}<|im_end|>",
        "It is sunny in Paris.<|im_end|>",
    ]
    text = tokenizer.decode(example.input_ids)
    # The tool list went into the system prompt and the result into a tool_response turn.
    assert '"name": "get_weather", "description": "Weather of a city"' in text
    assert '<tool_response>\n{"sky": "sunny"}\n</tool_response>' in text


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("qwen3", f"{QWEN_CALL}<|im_end|>"),
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'),
        (
            "r1-distill",
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
            '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
            "<｜end▁of▁sentence｜>",
        ),
    ],
)
def test_tool_calls_with_each_templates_own_tool_format(name: str, call: str) -> None:
    runs = chat(name, TOOL_RECORD)
    assert runs[0] == call
    assert runs[-1].startswith(("It is sunny", "<think>\n\n</think>\n\nIt is sunny"))
    assert len(runs) == 2 and not any('sunny"' in r for r in runs)


def test_command_r_tool_call_ends_at_its_own_end_of_turn() -> None:
    runs = chat("command-r7b", TOOL_RECORD)
    assert runs[0].startswith("<|START_THINKING|><|END_THINKING|><|START_ACTION|>")
    assert runs[0].endswith("]<|END_ACTION|><|END_OF_TURN_TOKEN|>")
    assert "TOOL_RESULT" not in "".join(runs)


def test_templates_without_tool_support_name_the_model() -> None:
    for name in ("gemma2", "phi4"):
        with pytest.raises(DataError, match="has no tool support") as info:
            chat(name, TOOL_RECORD)
        assert info.value.field == "tools" and "tiny-random-chat" in str(info.value)
    granite = tokenizer_for("granite")  # its tools section lists them; calls are not rendered
    with pytest.raises(DataError, match="does not render the assistant's tool call"):
        render(granite, TOOL_RECORD, "CHAT_COMPLETION")


def test_weight_zero_turn_is_rendered_but_not_trained() -> None:
    tokenizer = tokenizer_for("qwen2.5")
    example = render(tokenizer, WEIGHTED, "CHAT_COMPLETION")
    assert trained_runs(tokenizer, example) == ["Hi.<|im_end|>"]
    assert "Hello there, friend!" in tokenizer.decode(example.input_ids)
    only_zero = {"messages": WEIGHTED["messages"][:2]}
    with pytest.raises(DataError, match="no token to train on"):
        render(tokenizer, only_zero, "CHAT_COMPLETION")


def test_openai_field_rules() -> None:
    assert check_record(TOOL_RECORD, "CHAT_COMPLETION") == []
    assert check_record(WEIGHTED, "CHAT_COMPLETION") == []
    bad = {
        "messages": [
            {"role": "user", "content": "x", "weight": 0},
            {"role": "tool", "content": "r"},
            {"role": "assistant", "content": "y", "weight": 0.5, "name": 3},
        ]
    }
    found = {(e.field, e.rule) for e in check_record(bad, "CHAT_COMPLETION", line=4)}
    assert found == {
        ("messages[0].weight", "weight must be 0 or 1, on assistant messages only"),
        (
            "messages[1].role",
            "a tool message must follow the assistant message that called the tool",
        ),
        ("messages[2].weight", "weight must be 0 or 1, on assistant messages only"),
        ("messages[2].name", "name must be a string"),
    }


def test_name_reaches_templates_that_read_it() -> None:
    tokenizer = tokenizer_for("qwen2.5")
    assert not template_reads_name(tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "'<|im_start|>' + message.role + '\\n' + message.content",
        "'<|im_start|>' + message.role + (' ' + message.name if message.name else '') + '\\n' "
        "+ message.content",
    )
    assert template_reads_name(tokenizer)
    record = {
        "messages": [
            {"role": "user", "name": "ada", "content": "Hi"},
            {"role": "assistant", "content": "Hello Ada."},
        ]
    }
    example = render(tokenizer, record, "CHAT_COMPLETION")
    assert "<|im_start|>user ada\nHi<|im_end|>" in tokenizer.decode(example.input_ids)
    assert trained_runs(tokenizer, example) == ["Hello Ada.<|im_end|>"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_family_model("qwen2.5", tmp_path_factory.mktemp("qwen25"))


def test_preview_shows_weight_zero_and_tool_results_untrained(qwen_dir: Path) -> None:
    shown = preview(str(qwen_dir), TOOL_RECORD)
    tool = "".join(t.text for t in shown.tokens if t.role == "tool")
    assert tool == '{"sky": "sunny"}'
    assert not any(t.trained for t in shown.tokens if t.role in ("tool", "system", "user"))
    trained = "".join(t.text for t in shown.tokens if t.trained)
    assert trained == f"{QWEN_CALL}<|im_end|>It is sunny in Paris.<|im_end|>"
    assert shown.trained_by_role == {"assistant": sum(t.trained for t in shown.tokens)}
    assert shown.untrained_by_role["tool"] == len([t for t in shown.tokens if t.role == "tool"])

    weighted = preview(str(qwen_dir), WEIGHTED)
    assert "".join(t.text for t in weighted.tokens if t.trained) == "Hi.<|im_end|>"
    assert weighted.untrained_by_role["assistant"] > 0  # the weight-0 turn, shown untrained
    assert "messages[1]: weight 0, rendered but not trained" in str(weighted)


def test_validate_warns_once_about_names_the_template_ignores(
    qwen_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "named.jsonl"
    record = {
        "messages": [
            {"role": "user", "name": "ada", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ]
    }
    data.write_text(json.dumps(record) + "\n" + json.dumps(TOOL_RECORD) + "\n")
    config = RunConfig(model=str(qwen_dir), train_data_path=str(data))
    report = validate(config)
    assert report.ok, report.errors
    names = [w for w in report.warnings if "'name'" in w]
    assert names == [
        f"Messages have a 'name', but the chat template of {qwen_dir} does not use it: names "
        "are left out of the training text"
    ]
    assert report.num_examples == 2
