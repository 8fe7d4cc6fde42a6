"""A corpus of broken inputs: each gives one clear error that names its file, line, field and rule.

Each case writes a small file whose first line is a good example, so that the error's line number
is checked too, and validates it with the built-in tiny model through the public API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import ftmagic
from ftmagic.data.readers import iter_records
from ftmagic.errors import DataError

MODEL = "ftmagic/tiny-random-chat"
GOOD_CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
}
GOOD_INSTRUCTION = {"prompt": "2+2?", "response": "4"}


def chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


@dataclass
class Case:
    name: str
    content: bytes
    line: int | None
    field: str | None
    words: str
    fix_words: str | None = None
    task_type: str = "CHAT_COMPLETION"
    suffix: str = ".jsonl"


CASES = [
    Case(
        "truncated_json",
        jsonl(GOOD_CHAT) + b'{"messages": [{"role": "user", "content": "cut off her\n',
        2,
        None,
        "is not valid JSON",
        "cut off",
    ),
    Case(
        "content_not_string",
        jsonl(GOOD_CHAT, chat(("user", "Hi"), ("assistant", ["a", "list"]))),
        2,
        "messages[1].content",
        "content must be a string",
    ),
    Case(
        "messages_not_list", jsonl(GOOD_CHAT, {"messages": "hi"}), 2, "messages", "must be a list"
    ),
    Case(
        "message_not_object",
        jsonl(GOOD_CHAT, {"messages": ["hi", {"role": "assistant", "content": "x"}]}),
        2,
        "messages[0]",
        "must be an object",
    ),
    Case(
        "unknown_role",
        jsonl(GOOD_CHAT, chat(("user", "Hi"), ("bot", "Hello"))),
        2,
        "messages[1].role",
        "unknown role",
        "system, user or assistant",
    ),
    Case(
        "system_not_first",
        jsonl(GOOD_CHAT, chat(("user", "Hi"), ("system", "Be brief"), ("assistant", "Hello"))),
        2,
        "messages[1].role",
        "system message may only come first",
    ),
    Case(
        "two_users_in_a_row",
        jsonl(GOOD_CHAT, chat(("user", "Hi"), ("user", "Hi again"), ("assistant", "Hello"))),
        2,
        "messages[1].role",
        "two user messages in a row",
    ),
    Case(
        "no_assistant",
        jsonl(GOOD_CHAT, chat(("system", "Be brief"), ("user", "Hi"))),
        2,
        "messages",
        "no assistant message",
    ),
    Case(
        "last_not_assistant",
        jsonl(GOOD_CHAT, chat(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))),
        2,
        "messages[2].role",
        "last message must be from the assistant",
    ),
    Case("not_an_object", jsonl(GOOD_CHAT, [1, 2]), 2, None, "JSON array, not an object"),
    Case("empty_file", b"", None, None, "file is empty"),
    Case("only_blank_lines", b"\n  \r\n\n", None, None, "file is empty"),
    Case(
        "binary_file",
        b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 4,
        None,
        None,
        "not a text JSONL file",
    ),
    Case(
        "non_utf8_bytes",
        jsonl(GOOD_INSTRUCTION) + b'{"prompt": "caf\xe9", "response": "x"}\n',
        2,
        None,
        "not valid UTF-8 (byte 0xe9 at byte 16 of the line",
        "re-save the file as UTF-8",
        task_type="INSTRUCTION_FINETUNE",
    ),
    Case(
        "instruction_empty_response",
        jsonl(GOOD_INSTRUCTION, {"prompt": "hi", "response": "  "}),
        2,
        "response",
        "response is empty",
        task_type="INSTRUCTION_FINETUNE",
    ),
    Case(
        "instruction_wrong_type",
        jsonl(GOOD_INSTRUCTION, {"prompt": 12, "completion": "x"}),
        2,
        "prompt",
        "prompt must be a string",
        task_type="INSTRUCTION_FINETUNE",
    ),
    Case(
        "chat_file_as_instruction",
        jsonl(GOOD_CHAT, GOOD_CHAT),
        None,
        None,
        "looks like chat data",
        "set task_type: CHAT_COMPLETION",
        task_type="INSTRUCTION_FINETUNE",
    ),
    Case(
        "instruction_file_as_chat",
        jsonl(GOOD_INSTRUCTION),
        None,
        None,
        "looks like instruction data",
        "set task_type: INSTRUCTION_FINETUNE",
    ),
    Case(
        "csv_bad_messages_json",
        b'messages\n"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"""\n',
        2,
        "messages",
        "messages column is not valid JSON",
        suffix=".csv",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input_gives_located_error(tmp_path: Path, case: Case) -> None:
    path = tmp_path / f"{case.name}{case.suffix}"
    path.write_bytes(case.content)
    report = ftmagic.validate(model=MODEL, train_data_path=str(path), task_type=case.task_type)
    assert not report.ok
    assert report.num_errors == 1, [str(e) for e in report.errors]
    error = report.errors[0]
    assert error.source == str(path)
    assert error.line == case.line
    assert error.field == case.field
    assert case.words in error.rule
    assert error.fix
    if case.fix_words:
        assert case.fix_words in error.fix
    assert str(path) in str(report)


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(GOOD_CHAT, GOOD_CHAT).replace(b"\n", b"\r\n"))
    report = ftmagic.validate(model=MODEL, train_data_path=str(path))
    assert report.ok, str(report)
    assert report.num_examples == 2


def test_ten_megabyte_single_line_works(tmp_path: Path) -> None:
    long_answer = "word " * 2_000_000
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl(chat(("user", "Say it"), ("assistant", long_answer))))
    assert path.stat().st_size > 10_000_000
    records = list(iter_records(str(path)))
    assert len(records) == 1
    assert records[0].data["messages"][1]["content"] == long_answer


def test_missing_path_names_close_files(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_bytes(jsonl(GOOD_CHAT))
    missing = tmp_path / "trian.jsonl"
    report = ftmagic.validate(model=MODEL, train_data_path=str(missing))
    error = report.errors[0]
    assert (error.source, error.rule) == (str(missing), "path does not exist")
    assert "train.jsonl" in (error.fix or "")


def test_empty_txt_folder_for_continued_pretraining(tmp_path: Path) -> None:
    report = ftmagic.validate(
        model=MODEL, train_data_path=str(tmp_path), task_type="CONTINUED_PRETRAIN"
    )
    error = report.errors[0]
    assert (error.source, error.rule) == (str(tmp_path), "holds no .txt files")


def test_unreadable_delta_folder(tmp_path: Path) -> None:
    log = tmp_path / "table" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not a commit\n")
    report = ftmagic.validate(model=MODEL, train_data_path=str(tmp_path / "table"))
    error = report.errors[0]
    assert error.source == str(tmp_path / "table")
    assert "cannot be read as a Delta table" in error.rule
    assert "_delta_log" in (error.fix or "")


def test_missing_model_and_data_are_report_errors() -> None:
    report = ftmagic.validate()
    fields = sorted(e.field or "" for e in report.errors)
    assert fields == ["model", "train_data_path"]
    assert not report.ok


def test_unknown_model_is_a_report_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl(GOOD_CHAT))
    report = ftmagic.validate(model="ftmagic/tiny-chta", train_data_path=str(path))
    assert report.num_errors == 1
    error = report.errors[0]
    assert error.field == "model"
    assert "not in the catalog" in error.rule
    assert "ftmagic/tiny-random-chat" in error.rule
    assert report.num_examples == 1  # the rules were still checked


def test_many_bad_lines_are_counted_past_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(GOOD_CHAT) + b"{oops\n" * 500)
    report = ftmagic.validate(model=MODEL, train_data_path=str(path))
    assert report.num_errors == 500
    assert len(report.errors) == 20
    assert [e.line for e in report.errors] == list(range(2, 22))
    assert report.num_examples == 1


def _binary_in_folder(tmp_path: Path) -> Path:
    (tmp_path / "a.jsonl").write_bytes(jsonl(GOOD_CHAT))
    (tmp_path / "b.jsonl").write_bytes(b"\x00\x01\x02")
    return tmp_path


def _txt_as_chat(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("some text")
    return tmp_path


@pytest.mark.parametrize(
    ("make", "words", "fix_words"),
    [
        (_binary_in_folder, "not a text JSONL file", "JSON Lines"),
        (_txt_as_chat, "holds no .jsonl", "set task_type: CONTINUED_PRETRAIN"),
    ],
)
def test_folder_problems(
    tmp_path: Path, make: Callable[[Path], Path], words: str, fix_words: str
) -> None:
    path = make(tmp_path)
    report = ftmagic.validate(model=MODEL, train_data_path=str(path))
    assert report.num_errors == 1
    assert words in report.errors[0].rule
    assert fix_words in (report.errors[0].fix or "")


def test_raise_if_failed_lists_first_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{oops\n" * 8)
    report = ftmagic.validate(model=MODEL, train_data_path=str(path))
    with pytest.raises(ftmagic.errors.ValidationFailed) as info:
        report.raise_if_failed()
    message = str(info.value)
    assert "8 error(s)" in message
    assert f"{path}:1" in message
    assert "... and 3 more" in message
    assert info.value.report is report
    assert isinstance(report.errors[0], DataError)
