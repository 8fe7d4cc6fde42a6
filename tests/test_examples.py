"""The bundled datasets and the NER scoring helpers of ``ftmagic.examples``."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from ftmagic import examples
from ftmagic.data.readers import iter_records
from ftmagic.data.rules import check_record
from ftmagic.errors import DataError, FtmagicError

ROOT = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_datasets", ROOT / "scripts" / "make_datasets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drugs_of(split: str) -> set[str]:
    return {d for ex in examples.load("ner", split) for d in examples.reference_entities(ex)}


# --- the data -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "split", "count"),
    [
        ("ner", "train", 8000),
        ("ner", "eval", 250),
        ("ner", "test", 250),
        ("chat", "train", 600),
        ("chat", "eval", 60),
    ],
)
def test_jsonl_splits_exist_parse_and_are_small(dataset: str, split: str, count: int) -> None:
    where = Path(examples.path(dataset, split))
    assert where.is_file() and where.suffix == ".jsonl"
    assert where.stat().st_size < 2_500_000
    records = examples.load(dataset, split)
    assert len(records) == count
    assert all(set(r) == {"messages"} for r in records)


@pytest.mark.parametrize(
    ("dataset", "split"), [("ner", "train"), ("ner", "test"), ("chat", "train")]
)
def test_chat_records_pass_the_chat_rules(dataset: str, split: str) -> None:
    errors = [
        error
        for record in iter_records(examples.path(dataset, split))
        for error in check_record(
            record.data, "CHAT_COMPLETION", source=record.source, line=record.line
        )
    ]
    assert errors == []


def test_pretrain_is_a_small_folder_of_text_files() -> None:
    for split, files in (("train", 24), ("eval", 3)):
        folder = Path(examples.path("pretrain", split))
        texts = sorted(folder.glob("*.txt"))
        assert len(texts) == files
        assert [r["source"] for r in examples.load("pretrain", split)] == [t.name for t in texts]
    total = sum(
        f.stat().st_size for f in Path(examples.path("pretrain", "train")).parent.rglob("*")
    )
    assert 50_000 < total < 400_000


def test_test_and_eval_drugs_never_appear_in_train() -> None:
    train, eval_, test = drugs_of("train"), drugs_of("eval"), drugs_of("test")
    assert len(train) > 10_000 and len(test) > 100 and len(eval_) > 100
    assert not train & test and not train & eval_ and not eval_ & test
    train_words = {
        w.lower()
        for ex in examples.load("ner", "train")
        for w in re.findall(r"[A-Za-z]+", ex["messages"][1]["content"])
    }
    assert not test & train_words


def test_no_drug_name_repeats_in_train() -> None:
    names = [d for ex in examples.load("ner", "train") for d in examples.reference_entities(ex)]
    assert len(names) == len(set(names)) > 10_000


def test_answers_list_the_drugs_of_the_sentence_in_order() -> None:
    records = examples.load("ner", "test")
    empty = 0
    for record in records:
        system, user, answer = record["messages"]
        assert system["role"] == "system" and "JSON list" in system["content"]
        names = json.loads(answer["content"])
        empty += not names
        positions = [user["content"].index(name) for name in names]
        assert positions == sorted(positions)
    assert 0 < empty < len(records) // 4


def test_the_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    generator().build(tmp_path)
    committed = Path(examples.path("ner", "train")).parents[1]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 3 + 2 + 27
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (committed / rel).read_bytes(), rel


def test_unknown_dataset_or_split_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"not a bundled dataset.*use one of ner, chat, pretrain"):
        examples.path("imdb")
    with pytest.raises(FtmagicError, match=r"not a split of the 'chat' dataset.*train, eval"):
        examples.load("chat", "test")


# --- extract_entities ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["metformin", "lisinopril"]', ["metformin", "lisinopril"]),
        ("[]", []),
        ('Answer: ["metformin"] (one drug)', ["metformin"]),
        ('["metformin", "lisino', ["metformin"]),
        ('["metformin", "lisinopril", "metformin"]', ["metformin", "lisinopril"]),
        ("['warfarin', 'heparin']", ["warfarin", "heparin"]),
        ("[warfarin, heparin]", ["warfarin", "heparin"]),
        ('[" warfarin ", "", 3, null, true]', ["warfarin", "3"]),
        ('["a\\"b"]', ['a"b']),
        ("no list at all", []),
        ("", []),
        ("[", []),
        ('{"drugs": "x"}', []),
    ],
)
def test_extract_entities_parses_forgivingly(text: str, expected: list[str]) -> None:
    assert examples.extract_entities(text) == expected


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('["metformin"]', True),
        ("[]", True),
        ('Answer: ["a", "b"] done', True),
        ('["metformin", "lisino', False),
        ("[metformin]", False),
        ('["a", 3]', False),
        ("metformin", False),
        ("", False),
    ],
)
def test_is_json_list_checks_the_answer_format(text: str, valid: bool) -> None:
    assert examples.is_json_list(text) is valid


# --- ner_scores and evaluate_ner ----------------------------------------------------------------
def test_ner_scores_count_micro_averaged_matches() -> None:
    scores = examples.ner_scores(
        [["metformin", "aspirin"], [], ["Warfarin "]],
        [["metformin"], ["heparin"], ["warfarin"]],
    )
    # tp: metformin, warfarin; fp: aspirin; fn: heparin
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)


def test_ner_scores_edge_cases() -> None:
    assert examples.ner_scores([[]], [[]])["f1"] == 1.0
    nothing = examples.ner_scores([[], []], [["a"], ["b"]])
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)
    wrong = examples.ner_scores([["x"]], [[]])
    assert (wrong["precision"], wrong["f1"]) == (0.0, 0.0)
    exact = examples.ner_scores([["a", "b"]], [["b", "a"]])
    assert exact["f1"] == 1.0
    half = examples.ner_scores([["a"]], [["a", "b"]])
    assert (half["precision"], half["recall"]) == (1.0, 0.5)
    assert half["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        examples.ner_scores([[], []], [[]])


def test_evaluate_ner_scores_a_generate_function() -> None:
    records = examples.load("ner", "test")[:20]
    answers = {r["messages"][1]["content"]: r["messages"][2]["content"] for r in records}
    seen: list[list[dict[str, str]]] = []

    def oracle(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return f"Sure: {answers[messages[-1]['content']]}"

    perfect = examples.evaluate_ner(oracle, records)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    assert perfect["n"] == 20 and len(perfect["outputs"]) == 20 and perfect["json_valid"] == 1.0
    assert [m[-1]["role"] for m in seen] == ["user"] * 20

    def silent(batch: list[list[dict[str, str]]]) -> list[str]:
        return ["I do not know"] * len(batch)

    empty = examples.evaluate_ner(silent, records, batch_size=8)
    assert empty["f1"] == 0.0 and empty["tp"] == 0 and empty["json_valid"] == 0.0
    assert empty["fn"] == sum(len(r) for r in empty["references"]) > 0


# --- the bundled data passes ftmagic.validate with the default tiny model -------------------------
@pytest.mark.parametrize(
    ("dataset", "task_type", "examples_count"),
    [("ner", "CHAT_COMPLETION", 8000), ("chat", "CHAT_COMPLETION", 600)],
)
def test_bundled_chats_validate_with_the_tiny_model(
    dataset: str, task_type: str, examples_count: int
) -> None:
    import ftmagic

    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat",
        task_type=task_type,
        train_data_path=examples.path(dataset, "train"),
        eval_data_path=examples.path(dataset, "eval"),
    )
    assert report.ok, report.errors
    assert report.num_examples == examples_count
    assert report.num_truncated == 0
    assert 0 < report.trained_tokens < report.total_tokens


def test_pretrain_folder_validates_and_warns_that_it_is_small() -> None:
    import ftmagic

    report = ftmagic.validate(
        model="ftmagic/tiny-random-chat",
        task_type="CONTINUED_PRETRAIN",
        train_data_path=examples.path("pretrain", "train"),
        eval_data_path=examples.path("pretrain", "eval"),
    )
    assert report.ok, report.errors
    assert 10_000 < report.total_tokens < 1_500_000
    assert any("1.5M tokens" in w for w in report.warnings), report.warnings


def test_drug_names_are_the_same_tokens_in_the_sentence_and_the_answer() -> None:
    """The tiny tokenizer keeps spaces apart, so a name the model must copy is the same tokens in
    the sentence (after a space) and in the JSON answer (after a quote)."""
    from ftmagic.models.loading import load_tokenizer

    tokenizer = load_tokenizer("ftmagic/tiny-random-chat")
    for name in sorted(drugs_of("test") | drugs_of("train"))[::50]:
        spaced, quoted = tokenizer.tokenize(" " + name), tokenizer.tokenize('"' + name)
        assert spaced[0] == "Ġ" and quoted[0] == '"', name
        assert spaced[1:] == quoted[1:] == tokenizer.tokenize(name), name
