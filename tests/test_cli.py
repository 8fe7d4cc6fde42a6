"""The ftmagic command line, run in-process through main() and once as the installed script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftmagic import examples
from ftmagic.cli import build_parser, config_from_args, main, parse_value
from ftmagic.config import RunConfig

NER = examples.path("ner", "train")
SCRIPT = Path(sys.executable).with_name("ftmagic")


def write_config(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(RunConfig(**fields).to_yaml(only_changed=True))  # type: ignore[arg-type]
    return path


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["name", "context_length"]
    assert "meta-llama/Llama-3.2-1B-Instruct" in out
    assert "ftmagic/tiny-random-chat" in out
    assert "Meta-Llama-3-8B" not in out
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "retired 2024-12-13, use meta-llama/Llama-3.1-8B" in out


def test_installed_script_runs() -> None:
    result = subprocess.run(
        [str(SCRIPT), "models"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^meta-llama/Llama-3.1-70B-Instruct +131072 ", result.stdout, re.M)


def test_validate_ok_and_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path, model="ftmagic/tiny-random-chat", train_data_path=NER)
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out.splitlines()[0]
    with open(NER, encoding="utf-8") as handle:
        assert f"Examples: {sum(1 for _ in handle):,}" in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["validate", str(good), "--train-data-path", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:1 [messages]: has no assistant message" in out


def test_field_options_override_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path, model="ftmagic/tiny-random-chat", train_data_path=NER, seed=3)
    args = build_parser().parse_args(
        [
            "train",
            str(path),
            "--seed=9",
            "--learning-rate",
            "3e-4",
            "--packing",
            "false",
            "--eval-prompts",
            "[a, b]",
            "--register-to",
            "main.default",
            "--context-length",
            "null",
            "--model",
            "ftmagic/tiny-random-chatml",
        ]
    )
    config = config_from_args(args)
    assert (config.seed, config.learning_rate, config.packing) == (9, 3e-4, False)
    assert config.eval_prompts == ["a", "b"]
    assert (config.register_to, config.context_length) == ("main.default", None)
    assert (config.model, config.train_data_path) == ("ftmagic/tiny-random-chatml", NER)


def test_parse_value_keeps_text_fields_as_text() -> None:
    assert parse_value("yes", "model") == "yes"
    assert parse_value("123", "experiment_path") == "123"
    assert parse_value("null", "experiment_path") is None
    assert parse_value("yes", "packing") is True
    assert parse_value("0.5", "learning_rate") == 0.5
    assert parse_value("[q_proj, v_proj]", "lora_target_modules") == ["q_proj", "v_proj"]


def test_train_help_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, text in RunConfig.help().items():
        assert "--" + name.replace("_", "-") in out
        assert " ".join(text.split())[:40] in out
    assert "optimisation fields" in out


def test_user_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftmagic: ")
    assert "missing.yaml" in err
    assert "Traceback" not in err

    assert main(["validate", "--model", "ftmagic/tiny-random-chat", "--lora-rank", "0"]) == 2
    assert "lora_rank" in capsys.readouterr().err

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: x\nlearning_rte: 1\n")
    assert main(["train", str(bad_yaml)]) == 2
    assert "did you mean 'learning_rate'?" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        main(["validate", "--modle", "x"])
    assert info.value.code == 2
    assert "did you mean --model?" in capsys.readouterr().err


def test_resume_needs_a_run_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, model="ftmagic/tiny-random-chat", train_data_path=NER)
    assert main(["train", str(path), "--resume"]) == 2
    assert "--run-id" in capsys.readouterr().err


def test_script_error_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "validate", "--model", "ftmagic/tiny-random-chat", "--task-type", "CHAT"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "task_type" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_table(mlflow_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ftmagic.tracking import store

    assert main(["runs", "--limit", "5"]) == 0
    assert capsys.readouterr().out.strip() == "(none)"
    config = RunConfig(
        model="ftmagic/tiny-random-chat", train_data_path=NER, experiment_path="cli-test"
    )
    run_id = store.create_run(config, backend="inkernel")
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run_id", "name", "status", "model", "created"]
    assert lines[1].startswith(run_id)
    assert "ftmagic/tiny-random-chat" in lines[1]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d$", lines[1])


def test_validate_report_json_serialisable_through_cli_config(tmp_path: Path) -> None:
    from ftmagic.data.validate import validate

    args = build_parser().parse_args(["validate", "--model", "ftmagic/tiny-random-chat"])
    report = validate(config_from_args(args))
    data = json.loads(json.dumps(report.to_dict()))
    assert [e["field"] for e in data["errors"]] == ["train_data_path"]


def test_preview_shows_first_examples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, model="ftmagic/tiny-random-chat", train_data_path=NER)
    assert main(["preview", str(path), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert f"--- example 1 ({NER}:1) ---" in out
    assert f"--- example 2 ({NER}:2) ---" in out
    assert "--- example 3" not in out
    assert out.count("[[") >= 2  # trained spans are marked
    assert "tokens trained" in out
