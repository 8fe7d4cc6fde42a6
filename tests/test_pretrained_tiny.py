"""The pretrained tiny models ship with the package, load like real ones and have learned their
corpus; ``scripts/pretrain_tiny.py`` rebuilds them through ftmagic's own runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftmagic import tiny
from ftmagic.catalog import get_models, model_path
from ftmagic.models.generation import generate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tiny_corpus_tasks as corpus  # noqa: E402

NAMES = ("ftmagic/tiny-chat", "ftmagic/tiny-chatml", "ftmagic/tiny-base")


def test_pretrained_models_ship_as_safetensors_within_20_mb() -> None:
    total = 0
    for name in NAMES:
        folder = model_path(name)
        assert Path(folder).parent == ROOT / "src" / "ftmagic" / "resources" / "tiny_models"
        files = {p.name for p in Path(folder).iterdir()}
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
        total += sum(p.stat().st_size for p in Path(folder).iterdir())
    assert total < 20 * 2**20, total
    card = (ROOT / "src/ftmagic/resources/tiny_models/README.md").read_text("utf-8")
    assert "python scripts/pretrain_tiny.py" in card


def test_pretrained_chat_loads_with_auto_classes_as_float32() -> None:
    import torch

    path = model_path("ftmagic/tiny-chat")
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = tiny.TINY_MODELS["ftmagic/tiny-chat"]
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == tiny.param_count(spec)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (192, 4)
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.chat_template
    entry = {e.name: e for e in get_models()}["ftmagic/tiny-chat"]
    assert entry.kind == "tiny" and "pretrained" in entry.note


def test_three_models_share_one_vocabulary() -> None:
    vocabularies = [AutoTokenizer.from_pretrained(model_path(n)).get_vocab() for n in NAMES]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
    chatml = AutoTokenizer.from_pretrained(model_path("ftmagic/tiny-chatml"))
    prompt = chatml.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", ["ftmagic/tiny-chat", "ftmagic/tiny-chatml"])
def test_chat_models_copy_unseen_names_as_json(name: str) -> None:
    """What pretraining taught: follow the instruction, copy invented names exactly, answer in
    JSON. The 40 tasks come from a seed the training data never used, so every name is new.
    Measured when the weights were made: 27 of 40 exactly right (tiny-chat), 23 (tiny-chatml)."""
    from ftmagic.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(name), load_tokenizer(name)
    rng = random.Random(4242)
    exact = 0
    for _ in range(40):
        instruction, text, expected = corpus.extraction(rng)
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
        answer = generate(model, tokenizer, messages, max_new_tokens=32)
        assert isinstance(json.loads(answer), list), answer
        exact += answer == expected
    assert exact >= 18, exact


def test_pretraining_script_records_its_runs_and_writes_loadable_models(tmp_path: Path) -> None:
    """The whole pipeline at a toy scale: data, tokenizer, continued pretraining, two instruction
    runs, export. Each stage is an ftmagic run in the MLflow store."""
    env_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "pretrain_tiny.py"),
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
        "--docs",
        "16",
        "--records",
        "24",
        "--pretrain-tokens",
        "20_000tok",
        "--instruct-duration",
        "2ba",
        "--chatml-duration",
        "2ba",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": env_uri}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md",
        "tiny-base",
        "tiny-chat",
        "tiny-chatml",
    ]
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "out" / "tiny-chat", use_safetensors=True
    )
    assert model.config.hidden_size == 192
    import mlflow

    runs = mlflow.MlflowClient(env_uri).search_runs(
        [mlflow.MlflowClient(env_uri).get_experiment_by_name("tiny-pretrain").experiment_id]
    )
    assert sorted(r.data.params["task_type"] for r in runs) == [
        *["CHAT_COMPLETION"] * 3,  # two rounds for tiny-chat, one for tiny-chatml
        "CONTINUED_PRETRAIN",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Deterministic: the same data files on a second generation.
    first = (tmp_path / "work" / "instruct_train.jsonl").read_bytes()
    subprocess.run(
        [
            *command[:2],
            "--work",
            str(tmp_path / "w2"),
            "--docs",
            "16",
            "--records",
            "24",
            "--data-only",
        ],
        env=env,
        check=True,
        timeout=300,
    )
    assert (tmp_path / "w2" / "instruct_train.jsonl").read_bytes() == first
