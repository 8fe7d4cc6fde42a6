"""Third-party output goes to Python logging unless asked for: ``ftmagic train`` prints only
ftmagic's own lines, and ``verbose`` (the magic's trait, ``--verbose``, the config field) puts
the libraries back as they were."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures_ui import NER, TestingShell, ipshell, noise_in, write_slice
from ftmagic import quiet

__all__ = ["ipshell"]


@pytest.fixture
def restored() -> Iterator[None]:
    """Leave the process quiet, as every other test expects it."""
    yield
    quiet.set_verbose(False)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ftmagic_train_prints_only_its_own_lines(tmp_path: Path) -> None:
    train = write_slice(NER / "train.jsonl", tmp_path / "train.jsonl", 60)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"  # new: tables get created
    command = [sys.executable, "-m", "ftmagic.cli", "train", "--model", "ftmagic/tiny-random-chat"]
    command += ["--train-data-path", str(train), "--training-duration", "2ba"]
    command += ["--tokens-per-batch", "512", "--micro-batch-tokens", "512"]
    command += ["--validate-inputs", "false", "--max-new-tokens", "4"]
    command += ["--eval-prompts", "[Aspirin helps.]", "--register-to", "main.quiet"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200, check=False
    )
    assert done.returncode == 0, done.stderr
    assert noise_in(done.stdout + done.stderr) == []
    assert "COMPLETED" in done.stdout and "registered   models:/main.quiet." in done.stdout
    assert "step/s" in done.stderr or "2/2" in done.stderr  # ftmagic's own bar stays


def test_quiet_routes_library_output_to_logging(
    restored: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow  # noqa: F401 - quieting touches only imported libraries
    from mlflow.utils.logging_utils import eprint
    from transformers.utils import logging as hf_logging

    quiet.set_verbose(False)
    quiet.apply(load=("transformers",))
    assert not hf_logging.is_progress_bar_enabled()
    assert logging.getLogger("mlflow").propagate
    with caplog.at_level(logging.INFO):
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables")
        eprint("Successfully registered model 'x'.")
        with pytest.warns(UserWarning) as shown:
            quiet.apply()
            warnings.warn_explicit("a library warning", UserWarning, "/x/site-packages/a.py", 3)
            warnings.warn_explicit("a notebook warning", UserWarning, "<ipython-input-1>", 1)
    assert noise_in(capsys.readouterr().err) == []
    assert [str(w.message) for w in shown] == ["a notebook warning"]  # the user's still show
    logged = [r.getMessage() for r in caplog.records]
    assert "Creating initial MLflow database tables" in logged
    assert "Successfully registered model 'x'." in logged
    assert any("a library warning" in m for m in logged)


def test_verbose_puts_the_libraries_back(
    restored: None, ipshell: TestingShell, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.utils.logging_utils import eprint
    from transformers.utils import logging as hf_logging

    quiet.apply(load=("transformers", "mlflow"))
    ipshell.run_cell("%config FinetuneMagics.verbose = True")
    assert quiet.is_verbose() and hf_logging.is_progress_bar_enabled()
    assert not logging.getLogger("mlflow").propagate  # mlflow's own stderr handler again
    eprint("Successfully registered model 'y'.")
    assert "Successfully registered model 'y'." in capsys.readouterr().err
    config: Any = ipshell.magics.cell_config("model: ftmagic/tiny-random-chat")
    assert config.verbose is True  # so a run in another process is verbose too
    ipshell.run_cell("%config FinetuneMagics.verbose = False")
    assert not quiet.is_verbose() and not hf_logging.is_progress_bar_enabled()


def test_cli_verbose_flag_and_field() -> None:
    from ftmagic.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--model", "ftmagic/tiny-random-chat", "--verbose"])
    assert config_from_args(args).verbose is True
    args = parser.parse_args(["train", "--model", "ftmagic/tiny-random-chat", "--verbose", "false"])
    assert config_from_args(args).verbose is False
    assert parser.parse_args(["demo", "--verbose"]).verbose is True
