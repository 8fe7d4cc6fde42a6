"""The shapes users bring (ShareGPT, Alpaca, conversations, content parts, question/answer CSV,
Parquet with JSON text, plain text) are converted once with one report line, or refused with one
clear error and its fix; and prompts typed later are asked the way the model was trained."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from ftmagic.config import RunConfig
from ftmagic.data.dataset import load_examples
from ftmagic.data.formats import Converter, eval_prompt_inputs, model_input
from ftmagic.data.validate import ValidationReport, validate
from ftmagic.errors import DataError

MODEL = "ftmagic/tiny-random-chat"
SYSTEM = "You are a pharmacology assistant. Answer with the drug names only."

# Drug-combination questions like the bundled NER data, in the shapes other tools export.
QA = [
    ("Which drugs does the sentence name: aciclovir with valaciclovir?", "aciclovir, valaciclovir"),
    ("Which drugs does the sentence name: metformin and sitagliptin?", "metformin, sitagliptin"),
    ("Which drugs does the sentence name: warfarin was stopped?", "warfarin"),
    ("Which drugs does the sentence name: no treatment was given?", "none"),
]


def check(config: RunConfig) -> ValidationReport:
    return validate(config)


def jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return str(path)


def sharegpt_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": f"conv-{i}",
            "conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
                {"from": "human", "value": "And in one word?"},
                {"from": "gpt", "value": a.split(",")[0]},
            ],
        }
        for i, (q, a) in enumerate(QA)
    ]


def alpaca_rows() -> list[dict[str, Any]]:
    rows = [{"instruction": "List the drug names.", "input": q, "output": a} for q, a in QA]
    rows[0]["input"] = ""  # Alpaca leaves input empty when the instruction says it all
    return rows


def assert_converted_once(report: ValidationReport, start: str, examples: int) -> None:
    assert report.ok, report.errors
    assert report.num_examples == examples
    assert len(report.conversions) == 1, report.conversions
    assert report.conversions[0].startswith(start)
    assert str(report).count(start) == 1


def test_sharegpt_is_converted_with_one_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    config = RunConfig(model=MODEL, train_data_path=path)
    report = check(config)
    assert_converted_once(report, "ShareGPT detected: from/value → role/content", len(QA))
    assert "human → user" in report.conversions[0] and "gpt → assistant" in report.conversions[0]
    assert report.system_prompt == SYSTEM
    from ftmagic.models.loading import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    examples = load_examples(config, tokenizer)
    assert len(examples) == len(QA)
    assert sum(e.num_trained for e in examples) == report.trained_tokens


def test_alpaca_jsonl_becomes_chat_or_instruction(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())
    chat = check(RunConfig(model=MODEL, train_data_path=path))
    assert_converted_once(chat, "Alpaca detected: instruction/input/output → messages", len(QA))
    instruction = check(
        RunConfig(model=MODEL, train_data_path=path, task_type="INSTRUCTION_FINETUNE")
    )
    assert_converted_once(
        instruction, "Alpaca detected: instruction/input/output → prompt/response", len(QA)
    )
    converter = Converter("INSTRUCTION_FINETUNE")
    first, second = (converter.convert(row) for row in alpaca_rows()[:2])
    assert first == {"prompt": "List the drug names.", "response": QA[0][1]}
    assert second["prompt"] == "List the drug names.\n\n" + QA[1][0]


def test_pretty_printed_alpaca_json_array_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(alpaca_rows() * 50, indent=2, ensure_ascii=False), "utf-8")
    report = check(RunConfig(model=MODEL, train_data_path=str(path)))
    assert_converted_once(report, "Alpaca detected", 200)
    from ftmagic.data.readers import iter_records

    lines = [r.line for r in iter_records(str(path))][:3]
    assert lines == [2, 7, 12]  # each element's opening line in the indented array


def test_broken_json_array_is_one_error_with_its_line(tmp_path: Path) -> None:
    text = json.dumps(alpaca_rows(), indent=2)
    cut = text.index('"output"', text.index('"output"') + 1)
    path = tmp_path / "broken.json"
    path.write_text(text[:cut] + text[cut + 1 :], "utf-8")  # a quote lost in element 2
    report = check(RunConfig(model=MODEL, train_data_path=str(path)))
    assert report.num_errors == 1
    error = report.errors[0]
    assert error.line == text[:cut].count("\n") + 1 and "not valid JSON" in error.rule
    assert report.num_examples == 1


def test_conversations_column_of_role_content(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "conversations": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ],
            "source": "drug-combo",
        }
        for q, a in QA
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chats.parquet")
    report = check(RunConfig(model=MODEL, train_data_path=str(tmp_path / "chats.parquet")))
    assert_converted_once(report, "'conversations' column of role/content messages", len(QA))


def test_content_parts_are_joined_and_images_refused(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": q}]},
                {"role": "assistant", "content": [{"type": "text", "text": a}]},
            ]
        }
        for q, a in QA
    ]
    path = jsonl(tmp_path / "parts.jsonl", rows)
    report = check(RunConfig(model=MODEL, train_data_path=path))
    assert_converted_once(report, "content parts", len(QA))
    plain = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in QA
    ]
    same = check(RunConfig(model=MODEL, train_data_path=jsonl(tmp_path / "plain.jsonl", plain)))
    assert (same.total_tokens, same.trained_tokens) == (report.total_tokens, report.trained_tokens)

    image = {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    rows[2]["messages"][0]["content"].append(image)
    report = check(RunConfig(model=MODEL, train_data_path=jsonl(tmp_path / "img.jsonl", rows)))
    assert report.num_errors == 1 and report.num_examples == len(QA) - 1
    error = report.errors[0]
    assert (error.line, error.field) == (3, "messages[0].content[1]")
    assert "'image_url' is not text" in error.rule


def write_qa_csv(path: Path) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "answer"])
        for i, (q, a) in enumerate(QA):
            writer.writerow([i, q, a])
    return str(path)


def test_question_answer_csv_needs_a_mapping_and_says_which(tmp_path: Path) -> None:
    path = write_qa_csv(tmp_path / "qa.csv")
    report = check(RunConfig(model=MODEL, train_data_path=path, task_type="INSTRUCTION_FINETUNE"))
    assert report.num_errors == 1, report.errors  # one error for the file, not one per row
    error = report.errors[0]
    assert "has 'question' and 'answer'" in error.rule
    assert error.fix == "add columns: {prompt: question, response: answer} to the config"
    chat = check(RunConfig(model=MODEL, train_data_path=path))
    assert chat.num_errors == 1
    assert chat.errors[0].fix == (
        "set task_type: INSTRUCTION_FINETUNE and columns: {prompt: question, response: answer}"
    )

    mapped = RunConfig.from_yaml(
        f"model: {MODEL}\ntrain_data_path: {path}\ntask_type: INSTRUCTION_FINETUNE\n"
        "columns: {prompt: question, response: answer}\nprompt_template: '{prompt}\\nAnswer: '\n"
    )
    report = check(mapped)
    assert report.ok, report.errors
    assert report.num_examples == len(QA)
    assert report.conversions[0] == "columns renamed: question → prompt, answer → response"
    assert not [w for w in report.warnings if "run straight into" in w]


def test_a_wrong_column_name_is_named(tmp_path: Path) -> None:
    path = write_qa_csv(tmp_path / "qa.csv")
    config = RunConfig(
        model=MODEL,
        train_data_path=path,
        task_type="INSTRUCTION_FINETUNE",
        columns={"prompt": "questions", "response": "answer"},
    )
    report = check(config)
    assert report.num_errors == 1
    assert report.errors[0].rule == "has no column 'questions' (named in columns:)"
    assert report.errors[0].value == ["answer", "id", "question"]


def test_parquet_json_text_column_reads_as_csv_does(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "messages": json.dumps(
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            )
        }
        for q, a in QA
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "text.parquet")
    with (tmp_path / "text.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["messages"])
        writer.writeheader()
        writer.writerows(rows)
    parquet = check(RunConfig(model=MODEL, train_data_path=str(tmp_path / "text.parquet")))
    as_csv = check(RunConfig(model=MODEL, train_data_path=str(tmp_path / "text.csv")))
    assert parquet.ok and as_csv.ok, (parquet.errors, as_csv.errors)
    assert parquet.num_examples == as_csv.num_examples == len(QA)
    assert (parquet.total_tokens, parquet.trained_tokens) == (
        as_csv.total_tokens,
        as_csv.trained_tokens,
    )


def test_text_jsonl_under_the_default_task_is_one_error(tmp_path: Path) -> None:
    rows = [{"text": f"{q} {a}."} for q, a in QA]
    path = jsonl(tmp_path / "corpus.jsonl", rows)
    report = check(RunConfig(model=MODEL, train_data_path=path))
    assert report.num_errors == 1 and report.num_examples == 0
    assert report.errors[0].fix is not None
    assert report.errors[0].fix.startswith("set task_type: CONTINUED_PRETRAIN")
    pretrain = check(RunConfig(model=MODEL, train_data_path=path, task_type="CONTINUED_PRETRAIN"))
    assert pretrain.ok and pretrain.num_examples == len(QA) and not pretrain.conversions


def test_data_format_overrides_detection(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    wrong = check(RunConfig(model=MODEL, train_data_path=path, data_format="alpaca"))
    assert wrong.num_errors == 1
    assert wrong.errors[0].fix == "set data_format: sharegpt"
    # A ShareGPT file whose turns sit under "messages" is read as ShareGPT only when told.
    rows = [{"messages": r["conversations"]} for r in sharegpt_rows()]
    told = check(
        RunConfig(
            model=MODEL,
            train_data_path=jsonl(tmp_path / "m.jsonl", rows),
            data_format="sharegpt",
        )
    )
    assert_converted_once(told, "ShareGPT detected", len(QA))


def test_synonym_of_messages_names_the_mapping(tmp_path: Path) -> None:
    rows = [
        {"dialog": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in QA[:3]
    ]
    path = jsonl(tmp_path / "dialog.jsonl", rows)
    report = check(RunConfig(model=MODEL, train_data_path=path))
    assert report.num_errors == 1
    assert report.errors[0].fix == "add columns: {messages: dialog} to the config"
    mapped = check(RunConfig(model=MODEL, train_data_path=path, columns={"messages": "dialog"}))
    assert mapped.ok and mapped.num_examples == 3


def test_report_warns_when_little_is_trained(tmp_path: Path) -> None:
    long_system = " ".join(["Answer with the drug names from the sentence, nothing else."] * 12)
    rows = [
        {
            "messages": [
                {"role": "system", "content": long_system},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in QA
    ]
    report = check(RunConfig(model=MODEL, train_data_path=jsonl(tmp_path / "s.jsonl", rows)))
    assert report.ok
    share = report.trained_share
    assert share is not None and share < 0.10
    assert set(report.role_tokens) == {"system", "user", "assistant", "template"}
    assert report.role_tokens["system"] > sum(report.role_tokens.values()) / 2
    assert sum(report.role_tokens.values()) == report.total_tokens  # nothing truncated here
    trained = [w for w in report.warnings if w.startswith("Only ")]
    system = [w for w in report.warnings if "same system prompt" in w]
    assert len(trained) == 1 and f"{share:.1%}" in trained[0]
    assert len(system) == 1
    assert "Tokens by role: system" in str(report)


def test_instruction_prompts_that_run_into_the_response(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Drugs in: infections .", "response": '["aciclovir"]'},
        {"prompt": "Drugs in: colds\n", "response": '["none"]'},
    ]
    path = jsonl(tmp_path / "ner.jsonl", rows)
    config = RunConfig(model=MODEL, train_data_path=path, task_type="INSTRUCTION_FINETUNE")
    report = check(config)
    warnings = [w for w in report.warnings if "run straight into" in w]
    assert len(warnings) == 1 and warnings[0].startswith("1 prompt(s)")
    assert 'infections .["aciclovir"]' in warnings[0]
    templated = check(config.replace(prompt_template="{prompt}\n\nAnswer: "))
    assert not [w for w in templated.warnings if "run straight into" in w]
    assert templated.total_tokens > report.total_tokens
    assert templated.trained_tokens == report.trained_tokens


def test_prompts_get_the_shared_system_prompt(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    conversation = [{"role": "user", "content": "Name the drugs: aspirin."}]
    config = RunConfig(
        model=MODEL, train_data_path=path, eval_prompts=["Name the drugs: aspirin.", conversation]
    )
    assert eval_prompt_inputs(config) == [
        [{"role": "system", "content": SYSTEM}, *conversation],
        conversation,  # a message list is taken as written
    ]
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert model_input("and now?", config, history=history) == [
        {"role": "system", "content": SYSTEM},
        *history,
        {"role": "user", "content": "and now?"},
    ]
    mixed = sharegpt_rows()
    mixed[1]["conversations"][0]["value"] = "Another system prompt."
    other = config.replace(train_data_path=jsonl(tmp_path / "mixed.jsonl", mixed))
    assert model_input("x", other) == [{"role": "user", "content": "x"}]
    instruction = RunConfig(
        model=MODEL,
        train_data_path=path,
        task_type="INSTRUCTION_FINETUNE",
        prompt_template="Q: {prompt}\nA: ",
    )
    assert model_input("aspirin?", instruction) == "Q: aspirin?\nA: "


def test_bad_format_settings_are_config_errors() -> None:
    from ftmagic.errors import ConfigError

    with pytest.raises(ConfigError, match="data_format"):
        RunConfig(data_format="sharegtp")
    with pytest.raises(ConfigError, match="did you mean 'prompt'"):
        RunConfig(columns={"promt": "question"})
    with pytest.raises(ConfigError, match="has no \\{prompt\\} placeholder"):
        RunConfig(prompt_template="Question: ")
    with pytest.raises(ConfigError, match="eval_prompts"):
        RunConfig(eval_prompts=[{"role": "user"}])


def test_converter_raises_without_an_error_list() -> None:
    from ftmagic.data.readers import Record

    converter = Converter("CHAT_COMPLETION")
    records = [Record("x.jsonl", 1, {"text": "plain"})]
    with pytest.raises(DataError, match=r"x.jsonl:1 \[text\]: holds plain"):
        list(converter.records(records))
