"""The architecture matrix: tiny random-init models of every popular family (tests/archs.py), each
with its published chat template, through ftmagic's own code paths.

For each architecture: packed rows give the same per-example logits as examples alone (so there is
no cross-example attention, with the attention implementation ``load_model`` picks on CPU); full
and LoRA fine-tuning both train with the real trainer; and after a short copy-task run greedy
generation stops by itself at the end-of-turn token. A representative subset is registered,
served with ``mlflow models serve`` and answers as ``run.generate`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import archs
from ftmagic.config import RunConfig
from ftmagic.data.packing import collate, collate_padded, pack
from ftmagic.data.render import render, turn_closing
from ftmagic.data.templates import end_of_turn_token
from ftmagic.models.generation import load_for_inference, prompt_ids
from ftmagic.models.loading import load_model
from ftmagic.tracking import store
from ftmagic.tracking.run import get_run
from ftmagic.train.trainer import train
from test_packing import conversations

NAMES = list(archs.FAMILIES)
SERVED = ("qwen3", "gemma2")


COPY = ["red", "blue green gold", "pink teal"]


def copy_task(name: str) -> list[dict[str, Any]]:
    """Repeat-the-words conversations of different lengths, so stopping is learned from the
    words, not from a position. SmolLM3's template writes a long default system prompt unless
    the data has one of its own, so its records carry a short one."""
    records = []
    for words in COPY:
        messages = [
            {"role": "user", "content": f"Repeat: {words}"},
            {"role": "assistant", "content": words},
        ]
        if name == "smollm3":
            messages.insert(0, {"role": "system", "content": "Repeat the words."})
        records.append({"messages": messages})
    return records


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("archs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("FTMAGIC_CACHE", str(root / "cache"))
        mp.chdir(root)
        yield root


class ModelDirs(dict[str, Path]):
    """Each family's saved model, built on first use."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        self[name] = archs.save_family_model(name, self.root / "models" / name)
        return self[name]


@pytest.fixture(scope="module")
def model_dirs(env: Path) -> ModelDirs:
    return ModelDirs(env)


class FullRuns(dict[str, str]):
    """Each family's full fine-tuning run on the copy task (the SERVED ones registered), made on
    first use: the training test checks it, the serving test serves it, in either order."""

    def __init__(self, root: Path, model_dirs: ModelDirs) -> None:
        super().__init__()
        self.root = root
        self.model_dirs = model_dirs

    def __missing__(self, name: str) -> str:
        data = write_jsonl(self.root / f"{name}-copy.jsonl", copy_task(name))
        register = {"register_to": registered_name(name)} if name in SERVED else {}
        config = run_config(name, self.model_dirs[name], data, **register)
        run_id = store.create_run(config, backend="inkernel")
        result = train(config, run_id)
        assert result.status == "COMPLETED", result.reason
        assert result.final_loss is not None and result.final_loss < 0.1
        self[name] = run_id
        return run_id


def registered_name(name: str) -> str:
    return f"main.archs.{name.replace('.', '_').replace('-', '_')}"


@pytest.fixture(scope="module")
def full_runs(env: Path, model_dirs: ModelDirs) -> FullRuns:
    return FullRuns(env, model_dirs)


def run_config(name: str, folder: Path, data: Path, **changes: Any) -> RunConfig:
    base: dict[str, Any] = {
        "model": str(folder),
        "train_data_path": str(data),
        "training_duration": "50ba",
        "checkpoint_interval": "1000ba",
        "tokens_per_batch": 2048,  # the whole copy task in each step
        "micro_batch_tokens": 2048,
        "learning_rate": 5e-3,
        "lr_schedule": "constant",
        "warmup_steps": 1,
        "context_length": 512,
        "validate_inputs": False,
        "experiment_path": f"archs-{name}",
    }
    base.update(changes)
    return RunConfig.from_dict(base)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_packed_rows_equal_examples_alone(name: str, model_dirs: ModelDirs) -> None:
    tokenizer = archs.tokenizer_for(name)
    model = load_model(str(model_dirs[name])).eval()
    records = conversations(6)
    if name == "gemma2":  # its template rejects system messages
        records = [
            {"messages": [m for m in r["messages"] if m["role"] != "system"]} for r in records
        ]
    examples = [render(tokenizer, r, "CHAT_COMPLETION") for r in records]
    lengths = [len(e) for e in examples]
    rows = pack(lengths, sum(lengths))  # one row: every example after the first is packed
    assert rows == [sorted(range(len(lengths)), key=lambda i: -lengths[i])]
    batch = collate(examples, rows, sum(lengths), tokenizer.pad_token_id)
    packed = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    offset = 0
    for i in rows[0]:
        alone = model(
            input_ids=collate_padded([examples[i]], tokenizer.pad_token_id)["input_ids"],
            use_cache=False,
        ).logits
        torch.testing.assert_close(
            packed[0, offset : offset + lengths[i]], alone[0], atol=1e-5, rtol=0
        )
        offset += lengths[i]


def turn_end_id(name: str) -> int:
    tokenizer = archs.tokenizer_for(name)
    token = end_of_turn_token(tokenizer)
    assert token is not None and turn_closing(tokenizer).endswith(token)
    return int(tokenizer.convert_tokens_to_ids(token))


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", NAMES)
def test_full_training_learns_to_stop_at_the_end_of_turn(name: str, full_runs: FullRuns) -> None:
    records = copy_task(name)
    folder = store.resolve_weights(f"runs:/{full_runs[name]}")
    model, tokenizer = load_for_inference(folder)
    end = turn_end_id(name)
    assert end in model.generation_config.eos_token_id  # generation stops on the turn's end
    for record in records:
        prompt = record["messages"][:-1]
        answer = record["messages"][-1]["content"]
        ids = prompt_ids(tokenizer, prompt)
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(ids) :].tolist()
        # It stopped by itself, at the end-of-turn token, well before the limit.
        assert out[-1] == end and len(out) < 24, tokenizer.decode(out)
        text = tokenizer.decode(out, skip_special_tokens=True)
        assert text.strip().endswith(answer)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NAMES)
def test_lora_training_trains_the_adapters(name: str, env: Path, model_dirs: ModelDirs) -> None:
    data = write_jsonl(env / f"{name}-lora.jsonl", copy_task(name))
    targets = list(archs.FAMILIES[name].lora_targets)
    config = run_config(
        name,
        model_dirs[name],
        data,
        method="lora",
        lora_target_modules=targets,
        training_duration="8ba",
        learning_rate=5e-3,
        merge_lora=False,
    )
    result = train(config, store.create_run(config, backend="inkernel"))
    assert result.status == "COMPLETED", result.reason
    losses = store_losses(result.run_id)
    assert losses[max(losses)] < losses[1], losses
    folder = store.resolve_weights(f"runs:/{result.run_id}")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    wanted = set(targets) if targets != ["all-linear"] else {"all-linear"}
    assert set(adapter["target_modules"] if isinstance(adapter["target_modules"], list) else
               [adapter["target_modules"]]) >= wanted - {"all-linear"}  # fmt: skip
    assert not (folder / "model.safetensors").exists()


def store_losses(run_id: str) -> dict[int, float]:
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    return {m.step: m.value for m in history}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", SERVED)
def test_served_model_answers_as_run_generate(name: str, full_runs: FullRuns) -> None:
    run = get_run(full_runs[name])
    assert run.registered_model == f"models:/{registered_name(name)}/1"
    prompt = copy_task(name)[0]["messages"][:-1]
    expected = run.generate(prompt, max_new_tokens=16)
    assert expected.strip() == copy_task(name)[0]["messages"][-1]["content"]
    with run.serve() as endpoint:
        served = endpoint.chat(prompt, max_new_tokens=16)
    assert served.strip() == expected.strip()
