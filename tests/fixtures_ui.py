"""Helpers for the notebook-layer tests: an IPython shell with the extension loaded whose
``run_cell`` re-raises errors, a module-wide SQLite MLflow store, tiny NER data and a run config
on the built-in tiny model that trains in a few seconds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

NER = Path(str(resources.files("ftmagic.resources") / "ner"))


@dataclass
class CellOutput:
    """What a cell gave back: its value, printed text, and displayed text and HTML."""

    result: Any
    stdout: str
    text: str
    html: str
    error_in_exec: BaseException | None


class TestingShell:
    """An ``InteractiveShell`` whose ``run_cell`` captures output and re-raises errors."""

    __test__ = False

    def __init__(self) -> None:
        from IPython.core.interactiveshell import InteractiveShell

        from ftmagic.ui.magics import FinetuneMagics

        self.shell = InteractiveShell.instance()
        self.shell.config.pop("FinetuneMagics", None)  # %config of earlier tests is forgotten
        self.magics = FinetuneMagics(self.shell)
        self.shell.register_magics(self.magics)

    def close(self) -> None:
        self.shell.configurables.remove(self.magics)
        self.shell.config.pop("FinetuneMagics", None)

    @property
    def user_ns(self) -> dict[str, Any]:
        return self.shell.user_ns  # type: ignore[no-any-return]

    def run_cell(self, source: str) -> CellOutput:
        from IPython.utils.capture import capture_output

        with capture_output() as captured:
            result = self.shell.run_cell(source)
        result.raise_error()
        outputs = [o.data for o in captured.outputs]
        return CellOutput(
            result=result.result,
            stdout=captured.stdout,
            text="\n".join(str(d.get("text/plain", "")) for d in outputs),
            html="\n".join(str(d.get("text/html", "")) for d in outputs),
            error_in_exec=result.error_in_exec,
        )


@pytest.fixture
def ipshell() -> Iterator[TestingShell]:
    shell = TestingShell()
    yield shell
    shell.close()


def write_slice(source: Path, target: Path, count: int, start: int = 0) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines()[start : start + count]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def ui_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SQLite MLflow store, a checkpoint folder and NER chat data shared by one test module."""
    root = tmp_path_factory.mktemp("ui-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("FTMAGIC_CHECKPOINT_DIR", str(root / "checkpoints"))
        mp.chdir(root)
        yield {
            "root": root,
            "train": write_slice(NER / "train.jsonl", root / "train.jsonl", 120),
            "eval": write_slice(NER / "eval.jsonl", root / "eval.jsonl", 16),
        }


def fast_fields(env: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Config fields for a run that takes a few seconds on 2 CPUs."""
    fields: dict[str, Any] = {
        "model": "ftmagic/tiny-random-chat",
        "train_data_path": str(env["train"]),
        "training_duration": "4ba",
        "checkpoint_interval": "2ba",
        "tokens_per_batch": 512,
        "micro_batch_tokens": 512,
        "learning_rate": 2e-3,
        "warmup_steps": 1,
        "validate_inputs": False,
        "experiment_path": "ui-tests",
        "max_new_tokens": 4,
    }
    fields.update(changes)
    return fields


def write_kernelspec(root: Path) -> Path:
    """Write a ``python3`` kernelspec under ``root`` that runs this interpreter (the venv's
    ipykernel); put ``root`` first on ``JUPYTER_PATH`` to use it. Returns ``root``."""
    import json
    import sys

    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "ftmagic tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


@pytest.fixture(scope="module")
def kernel_spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``python3`` kernelspec that runs this interpreter (the venv's ipykernel), first on
    ``JUPYTER_PATH``; kernels started by the module's tests see no test-only quieting switch
    (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``), so ftmagic's own quieting is what is tested."""
    root = write_kernelspec(tmp_path_factory.mktemp("jupyter"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
        yield "python3"


# What transformers, huggingface_hub and mlflow print by themselves when left alone.
THIRD_PARTY_NOISE = (
    "Loading weights",
    "Writing model shards",
    "Downloading artifacts",
    "model card could not be retrieved",
    "Unable to find license information",
    "Failed to log model config",
    "Changing param values is not allowed",
    "Creating initial MLflow database tables",
    "Successfully registered model",
    "it/s]",
)


def noise_in(text: str) -> list[str]:
    """The third-party messages found in ``text``."""
    return [marker for marker in THIRD_PARTY_NOISE if marker in text]
