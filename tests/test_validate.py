"""validate(): exact token counts (checked against render), truncation, run size, advice, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ftmagic
from ftmagic import examples
from ftmagic.config import RunConfig
from ftmagic.data.readers import iter_records, iter_text_files
from ftmagic.data.render import chunk_texts, render
from ftmagic.data.validate import Histogram, ValidationReport, validate
from ftmagic.models.loading import load_tokenizer

CHAT = examples.path("chat", "train")
NER = examples.path("ner", "train")


def lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def rendered_lengths(model: str, path: str, task_type: str) -> list[tuple[int, list[bool]]]:
    tokenizer = load_tokenizer(model)
    out = []
    for record in iter_records(path):
        example = render(tokenizer, record.data, task_type)
        out.append((len(example.input_ids), example.trained))
    return out


@pytest.mark.parametrize("model", ["ftmagic/tiny-random-chat", "ftmagic/tiny-random-chatml"])
def test_chat_counts_equal_render(model: str) -> None:
    report = ftmagic.validate(model=model, train_data_path=CHAT, context_length=150)
    exact = rendered_lengths(model, CHAT, "CHAT_COMPLETION")
    assert report.ok, str(report)
    assert report.num_examples == len(exact) == lines(CHAT) > 100
    assert report.total_tokens == sum(min(n, 150) for n, _ in exact)
    assert report.trained_tokens == sum(sum(mask[:150]) for _, mask in exact)
    assert report.num_truncated == sum(n > 150 for n, _ in exact) > 0
    assert sum(report.length_histogram.counts) == len(exact)
    assert report.length_histogram.edges[0] == min(n for n, _ in exact)
    assert report.length_histogram.edges[-1] > max(n for n, _ in exact)
    assert any("will be truncated" in w for w in report.warnings)


def test_instruction_counts_equal_render(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q: 2+2?\nA:", "response": " 4"},
        {"prompt": "Translate 'chat' to English: ", "completion": "cat"},
        {"prompt": "Say hello ", "response": "hello world " * 20},
    ]
    path = tmp_path / "instr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat",
        train_data_path=str(path),
        task_type="INSTRUCTION_FINETUNE",
    )
    exact = rendered_lengths("ftmagic/tiny-random-chat", str(path), "INSTRUCTION_FINETUNE")
    assert report.ok, str(report)
    assert report.total_tokens == sum(n for n, _ in exact)
    assert report.trained_tokens == sum(sum(mask) for _, mask in exact)


def test_pretraining_counts_equal_chunking() -> None:
    path = examples.path("pretrain", "train")
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=path, task_type="CONTINUED_PRETRAIN"
    )
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    chunks = list(chunk_texts(tokenizer, (text for _, text in iter_text_files(path)), 10_000_000))
    assert report.ok, str(report)
    assert report.total_tokens == report.trained_tokens == len(chunks[0].input_ids)
    assert report.num_examples == len(list(iter_text_files(path)))
    assert any("1.5M tokens" in r for r in report.recommendations)


def test_pretraining_from_text_records_is_never_truncated(tmp_path: Path) -> None:
    long_text = "field notes about the weather and the river. " * 400
    path = tmp_path / "docs.jsonl"
    rows = [{"text": long_text}, {"text": "short"}, {"messages": []}, {"text": 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat",
        train_data_path=str(path),
        task_type="CONTINUED_PRETRAIN",
        context_length=256,
    )
    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    expected = sum(len(c.input_ids) for c in chunk_texts(tokenizer, [long_text, "short"], 256))
    assert report.num_examples == 2
    assert report.total_tokens == report.trained_tokens == expected > 256
    assert report.num_truncated == 0
    assert [(e.line, e.field) for e in report.errors] == [(3, None), (4, "text")]
    assert report.errors[0].fix == "set task_type: CHAT_COMPLETION"
    assert report.errors[1].rule == "text must be a string"


def test_chat_file_given_as_pretraining_names_the_task(tmp_path: Path) -> None:
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=NER, task_type="CONTINUED_PRETRAIN"
    )
    assert report.num_errors == 1
    assert report.errors[0].fix == "set task_type: CHAT_COMPLETION"


def test_steps_are_the_trainers_and_time_is_calibrated(tmp_path: Path) -> None:
    """Steps come from the trainer's packing plan (not full rows); the time from a measured
    calibration, split by phase (the estimate's accuracy is tested in test_estimate)."""
    from ftmagic.data.dataset import load_examples
    from ftmagic.data.plan import make_plan
    from ftmagic.train.calibration import measure

    data = tmp_path / "ner.jsonl"
    with open(NER, encoding="utf-8") as handle:
        data.write_text("".join(handle.readlines()[:300]), encoding="utf-8")
    config = RunConfig(
        model="ftmagic/tiny-random-chat",
        train_data_path=str(data),
        training_duration="2ep",
        tokens_per_batch=1024,
        micro_batch_tokens=1024,
    )
    report = validate(config, measure=measure)
    examples = load_examples(config, load_tokenizer(config.model))
    planned = make_plan(examples, config, report.context_length or 0)
    assert report.estimated_steps == len(planned.steps) > config.total_steps(report.stats())
    assert report.estimated_seconds is not None and report.estimated_seconds > 0
    parts = report.estimate_parts
    assert set(parts) == {"startup", "training", "evaluation", "checkpoints", "registration"}
    assert sum(parts.values()) == pytest.approx(report.estimated_seconds)
    assert parts["training"] > 0 and parts["registration"] == 0
    assert report.stats().num_tokens == report.total_tokens


def test_eval_data_is_validated_and_named(tmp_path: Path) -> None:
    bad_eval = tmp_path / "eval.jsonl"
    bad_eval.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=NER, eval_data_path=str(bad_eval)
    )
    assert report.num_errors == 1
    assert report.errors[0].source == str(bad_eval)
    assert report.errors[0].line == 1
    good = ftmagic.validate(
        model="ftmagic/tiny-random-chat",
        train_data_path=NER,
        eval_data_path=examples.path("ner", "eval"),
    )
    assert good.ok
    assert good.eval_num_examples == lines(examples.path("ner", "eval")) > 0
    assert good.eval_tokens > 0


def test_recommendations_of_the_hosted_product(tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        )
        + "\n"
    )
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=str(small), training_duration="6ep"
    )
    assert report.ok
    text = " ".join(report.recommendations)
    assert "less than one context length (2,048)" in text
    assert "6 epochs" in text and "1 to 4 epochs" in text
    assert set(report.recommendations) <= set(report.warnings)


def test_runs_over_ten_billion_tokens_are_refused() -> None:
    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=NER, training_duration="20_000_000_000tok"
    )
    assert not report.ok
    error = report.errors[0]
    assert error.field == "training_duration"
    assert "over the limit of 10,000,000,000" in error.rule


def test_retired_model_names_its_replacement() -> None:
    report = ftmagic.validate(model="meta-llama/Meta-Llama-3-8B-Instruct", train_data_path=NER)
    assert any(
        "retired" in r and "meta-llama/Llama-3.1-8B-Instruct" in r for r in report.recommendations
    )
    assert report.context_length == 8192


def test_model_without_chat_template_is_one_error() -> None:
    report = ftmagic.validate(model="ftmagic/tiny-random-base", train_data_path=NER)
    assert report.num_errors == 1
    assert "no chat template" in report.errors[0].rule
    assert report.num_examples == lines(NER)  # rules still checked


def test_sources_agree(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.data for r in iter_records(NER)][:50]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ner.parquet")
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=str(tmp_path / "ner.parquet")
    )
    b = ftmagic.validate(
        model="ftmagic/tiny-random-chat", train_data_path=str(tmp_path / "ner.jsonl")
    )
    assert (a.num_examples, a.total_tokens, a.trained_tokens) == (
        b.num_examples,
        b.total_tokens,
        b.trained_tokens,
    )
    assert a.num_examples == 50


def test_report_outputs(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    evil = {"messages": [{"role": "<script>alert(1)</script>", "content": "x"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(evil) + "\n")
    report = ftmagic.validate(model="ftmagic/tiny-random-chat", train_data_path=str(path))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["num_examples"] == 1
    assert data["errors"][0]["line"] == 2
    assert data["errors"][0]["field"] == "messages[0].role"
    assert data["length_histogram"]["counts"] == [1]
    page = report._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<table" in page
    text = str(report)
    assert f"{path}:2 [messages[0].role]: unknown role" in text
    assert "Examples: 1" in text


def test_histogram_bins() -> None:
    from array import array

    hist = Histogram.of(array("I", [10, 11, 12, 40]), bins=3)
    assert hist.edges == [10, 21, 32, 43]
    assert hist.counts == [3, 0, 1]
    assert Histogram.of(array("I")).counts == []


def test_report_is_the_public_type() -> None:
    report = ftmagic.validate(model="ftmagic/tiny-random-chat", train_data_path=NER)
    assert isinstance(report, ValidationReport)
    assert report.ok
    report.raise_if_failed()


def test_a_retired_model_is_a_warning_in_the_report_not_a_python_warning() -> None:
    """The report carries the replacement; no process-wide warning state is touched (a run's
    thread may be showing its own warnings meanwhile)."""
    import warnings

    from ftmagic.catalog import get_models

    name = next(e.name for e in get_models() if e.retired)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        report = validate(RunConfig(model=name, train_data_path=str(NER)))
    assert f"{name} was retired on 2024-12-13; use " in "\n".join(report.warnings)
