"""Make the built-in tiny model family with ftmagic itself, and ship it in the package.

    .venv/bin/python scripts/pretrain_tiny.py            # about 45 minutes on 2 CPU cores

1. Learn the shared BPE vocabulary from ``ftmagic.tiny.corpus_text()``, and write the seeded
   random-init model of ``ftmagic/tiny-base``.
2. Generate the corpus (``scripts/tiny_pretrain_data.py``): stories, notes and records for
   pretraining, and instruction chats.
3. Pretrain the random-init model with ftmagic's CONTINUED_PRETRAIN path.
4. Instruction-tune the base with ftmagic's CHAT_COMPLETION path, once with the Llama 3 template
   (``tiny-chat``) and then, from that model, briefly with ChatML (``tiny-chatml``).
5. Write the three models' weights as bfloat16 safetensors, the tokenizer and a model card into
   ``src/ftmagic/resources/tiny/``.

Every step is seeded, so a rerun on the same software gives the same weights. Every run is
recorded in the MLflow store ``build/tiny-pretrain/mlflow.db`` (experiment ``tiny-models``).
After a rebuild, bump ``ftmagic.tiny.VERSION`` so that users' caches pick up the new weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_pretrain_data as data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "src" / "ftmagic" / "resources" / "tiny"
SEED = 7


def banned_names() -> set[str]:
    """Every drug name of the bundled NER data: the corpus never contains them."""
    from ftmagic import examples

    return {
        name
        for split in ("train", "eval", "test")
        for record in examples.load("ner", split)
        for name in examples.reference_entities(record)
    }


def write_corpus(out: Path, docs: int, chats: int) -> None:
    banned = banned_names()
    data.write_text_folder(out / "pretrain" / "train", data.pretrain_documents(SEED, docs, banned), 2000)
    data.write_text_folder(out / "pretrain" / "eval", data.pretrain_documents(SEED + 1, 300, banned), 300)
    data.write_jsonl(out / "instruct" / "train.jsonl", data.instruct_records(SEED + 2, chats, banned))
    data.write_jsonl(out / "instruct" / "eval.jsonl", data.instruct_records(SEED + 3, 200, banned))


def write_vocabulary_and_init(out: Path) -> Path:
    from ftmagic import tiny

    spec = tiny.TINY_MODELS["ftmagic/tiny-base"]
    shipped = RESOURCES / "tokenizer.json"
    RESOURCES.mkdir(parents=True, exist_ok=True)
    if not shipped.exists():
        tiny.train_vocabulary(spec).save(str(shipped))
    init = out / "init"
    shutil.rmtree(init, ignore_errors=True)
    tiny.build_tiny_model(spec, init, pretrained=False)
    return init


def with_tokenizer(weights_dir: Path, name: str, out: Path) -> Path:
    """A model folder with the weights of ``weights_dir`` and the tokenizer of tiny model ``name``."""
    from ftmagic import tiny

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = tiny.TINY_MODELS[name]
    tokenizer = tiny.build_tokenizer(spec)
    tokenizer.save_pretrained(str(out))
    model = tiny.build_model(spec, tokenizer, pretrained=False)
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(
        load_file(str(weights_dir / "model.safetensors")), strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.save_pretrained(str(out))
    return out


def train(phase: str, **config: Any) -> Path:
    """Run one ftmagic training phase in this process and return its final checkpoint folder."""
    import ftmagic
    from ftmagic.tracking import store

    started = time.time()
    run = ftmagic.create(
        backend="inkernel", experiment_path="tiny-models", seed=SEED, lr_schedule="cosine", **config
    )
    run.wait()
    if run.status != "COMPLETED":
        raise SystemExit(f"{phase}: the run ended {run.status}; see run {run.run_id} in MLflow")
    loss = run.metrics(["train/loss", "eval/loss"])
    summary = {
        "phase": phase,
        "run_id": run.run_id,
        "minutes": round((time.time() - started) / 60, 1),
        "train_loss": round(loss["train/loss"][-1][1], 3),
        "eval_loss": round(loss["eval/loss"][-1][1], 3) if loss["eval/loss"] else None,
    }
    print(json.dumps(summary), flush=True)
    return Path(store.download_checkpoint(run.run_id))


def ship(folder: Path, weights: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state.pop("lm_head.weight", None)  # tied to the embeddings
    small = {k: v.to(torch.bfloat16).contiguous() for k, v in sorted(state.items())}
    save_file(small, str(RESOURCES / f"{weights}.safetensors"), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "tiny-pretrain")
    parser.add_argument("--pretrain-tokens", default="12_000_000tok")
    parser.add_argument("--instruct-tokens", default="4_000_000tok")
    parser.add_argument("--chatml-tokens", default="1_000_000tok")
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--chats", type=int, default=40_000)
    parser.add_argument("--phases", default="corpus,base,chat,chatml")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    os.environ.setdefault("FTMAGIC_CACHE", str(out / "cache"))
    phases = args.phases.split(",")
    common = {"tokens_per_batch": 16_384, "micro_batch_tokens": 4096, "max_grad_norm": 1.0}
    if "corpus" in phases:
        write_corpus(out / "data", args.docs, args.chats)
    init = write_vocabulary_and_init(out)
    if "base" in phases:
        base = train(
            "base",
            model=str(init),
            task_type="CONTINUED_PRETRAIN",
            train_data_path=str(out / "data" / "pretrain" / "train"),
            eval_data_path=str(out / "data" / "pretrain" / "eval"),
            training_duration=args.pretrain_tokens,
            learning_rate=3e-3,
            warmup_steps=30,
            context_length=512,
            checkpoint_interval="2_000_000tok",
            **common,
        )
        ship(base, "base")
        shutil.copytree(base, out / "base", dirs_exist_ok=True)
    if "chat" in phases:
        start = with_tokenizer(out / "base", "ftmagic/tiny-chat", out / "chat-start")
        chat = train(
            "chat",
            model=str(start),
            train_data_path=str(out / "data" / "instruct" / "train.jsonl"),
            eval_data_path=str(out / "data" / "instruct" / "eval.jsonl"),
            training_duration=args.instruct_tokens,
            learning_rate=2e-3,
            warmup_steps=10,
            checkpoint_interval="1_000_000tok",
            **common,
        )
        ship(chat, "chat")
        shutil.copytree(chat, out / "chat", dirs_exist_ok=True)
    if "chatml" in phases:
        start = with_tokenizer(out / "chat", "ftmagic/tiny-chatml", out / "chatml-start")
        chatml = train(
            "chatml",
            model=str(start),
            train_data_path=str(out / "data" / "instruct" / "train.jsonl"),
            eval_data_path=str(out / "data" / "instruct" / "eval.jsonl"),
            training_duration=args.chatml_tokens,
            learning_rate=1e-3,
            warmup_steps=5,
            checkpoint_interval="1_000_000tok",
            **common,
        )
        ship(chatml, "chatml")


if __name__ == "__main__":
    main()
