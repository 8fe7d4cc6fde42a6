"""Pretrain the built-in tiny models with ftmagic itself, and write them into the package.

    python scripts/pretrain_tiny.py            # about 40 minutes on 2 CPU cores

1. Generates the corpus (``scripts/tiny_corpus_tasks.py``, seeded) into ``build/tiny-pretrain``.
2. Trains one byte-level BPE tokenizer for all three models.
3. Continued pretraining of a random-init Llama on the text: ``ftmagic/tiny-base``.
4. Instruction tuning of that base with the Llama 3 template (``ftmagic/tiny-chat``) and with
   ChatML (``ftmagic/tiny-chatml``).
5. Writes each model (bf16 safetensors, tokenizer, model card) to
   ``src/ftmagic/resources/tiny_models/<name>/``.

Every run goes through ``ftmagic.create`` and is recorded in the MLflow store at
``$MLFLOW_TRACKING_URI`` (default ``sqlite:///build/tiny-pretrain/mlflow.db``), experiment
``tiny-pretrain``. The script is deterministic: same seeds, same data, same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_corpus_tasks as corpus

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "tiny-pretrain"
OUT = ROOT / "src" / "ftmagic" / "resources" / "tiny_models"
SEED = 20261130


def write_data(work: Path, docs: int, records: int) -> None:
    """The pretraining text (one .txt file a document), and two sets of instruction chats (the
    second, twice as large, is fresh names for the second round); eval splits are small."""
    rng = random.Random(SEED)
    for split, n in (("train", docs), ("eval", max(20, docs // 100))):
        folder = work / "text" / split
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"doc_{i:05d}.txt").write_text(corpus.pretraining_text(rng), "utf-8")
    for stem, seed, n in (("instruct", SEED + 1, records), ("instruct2", SEED + 2, 2 * records)):
        rng = random.Random(seed)  # the chats have their own streams: the text stays the same
        for split, count in (("train", n), ("eval", max(20, records // 240))):
            with open(work / f"{stem}_{split}.jsonl", "w", encoding="utf-8") as f:
                for _ in range(count):
                    f.write(json.dumps(corpus.chat_record(rng)) + "\n")


def tokenizer_texts(work: Path) -> list[str]:
    from ftmagic import tiny

    texts = tiny.corpus_text().split("\n\n")
    texts += [p.read_text("utf-8") for p in sorted((work / "text" / "train").glob("*.txt"))]
    return texts


def create(**config: object) -> Any:
    """One ftmagic run, waited for; fails loudly unless it completed."""
    import ftmagic

    run = ftmagic.create(experiment_path="tiny-pretrain", seed=SEED % 10_000, **config)
    run.wait()
    if run.status != "COMPLETED":
        raise SystemExit(f"run {run.run_id} ended {run.status}: {run.error}")
    print(f"run {run.name} ({run.run_id}) completed", flush=True)
    return run


def final_model(run: Any) -> str:
    """The folder of ``run``'s final checkpoint's model."""
    from ftmagic.models.loading import model_folder
    from ftmagic.tracking.checkpoints import download_checkpoint

    return str(model_folder(download_checkpoint(run.run_id)))


def with_tokenizer(weights: str, name: str, work: Path) -> Path:
    """A model folder: the weights in ``weights``, the tokenizer files of tiny model ``name``."""
    from ftmagic import tiny

    folder = work / "models" / name.removeprefix(tiny.PREFIX)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for file in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy2(Path(weights) / file, folder / file)  # not the checkpoint's optimizer state
    tiny.write_tokenizer_files(tiny.PRETRAINED[name], work / "tokenizer.json", folder)
    return folder


def export(folder: Path, name: str, out: Path) -> None:
    """Write model ``folder`` into ``out``: bf16 safetensors (half the size) that load as
    float32, the tokenizer and configs."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftmagic import tiny

    target = out / name.removeprefix(tiny.PREFIX)
    shutil.rmtree(target, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    model.to(torch.bfloat16).save_pretrained(str(target), safe_serialization=True)
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(file, target / file.name)
    config = json.loads((target / "config.json").read_text("utf-8"))
    config["dtype"] = "float32"  # train and run in float32 on a CPU; bf16 is only storage
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    print(f"wrote {target}", flush=True)


def run_row(stage: str, run: Any) -> str:
    """A model card table row: what one stage's run did."""
    steps = run.metrics(["train/loss", "eval/loss", "train/tokens"])
    last = {k: (v[-1][1] if v else float("nan")) for k, v in steps.items()}
    step = steps["train/loss"][-1][0] if steps["train/loss"] else 0
    return (
        f"| {stage} | `{run.run_id}` | {step} | {last['train/tokens']:,.0f} | "
        f"{last['train/loss']:.3f} | {last['eval/loss']:.3f} |"
    )


def write_card(out: Path, rows: list[str]) -> None:
    """The model card: how the weights were made, by which runs."""
    card = (Path(__file__).parent / "tiny_model_card.md").read_text("utf-8")
    (out / "README.md").write_text(card.replace("{runs}", "\n".join(rows)), "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=WORK, help="data, runs and scratch models")
    parser.add_argument("--out", type=Path, default=OUT, help="where the models are written")
    parser.add_argument("--docs", type=int, default=6000, help="pretraining documents")
    parser.add_argument("--records", type=int, default=48000, help="instruction chats")
    parser.add_argument("--pretrain-tokens", default="10_000_000tok")
    parser.add_argument("--instruct-duration", default="1ep")
    parser.add_argument("--instruct2-duration", default="1ep")
    parser.add_argument("--chatml-duration", default="60ba")
    parser.add_argument(
        "--base-run", help="an earlier pretraining run's id: skip pretraining and start from it"
    )
    parser.add_argument(
        "--chat-run", help="an earlier round-1 instruction run's id: start from round 2"
    )
    parser.add_argument("--data-only", action="store_true", help="only write the data")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    write_data(args.work, args.docs, args.records)
    if not args.data_only:
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.work / 'mlflow.db'}")
        train_all(args)


def train_all(args: argparse.Namespace) -> None:
    import ftmagic
    from ftmagic import tiny

    work, out = args.work, args.out
    base = ftmagic.get(args.base_run) if args.base_run else pretrain(args)
    rows = [run_row("continued pretraining: tiny-base", base)]
    export(with_tokenizer(final_model(base), "ftmagic/tiny-base", work), "ftmagic/tiny-base", out)
    chat = (
        ftmagic.get(args.chat_run)
        if args.chat_run
        else chat_run(base, "ftmagic/tiny-chat", work, "instruct", args.instruct_duration, 1.5e-3)
    )
    rows.append(run_row("instruction tuning, round 1: tiny-chat", chat))
    # Round 2: fresh names at a lower rate. Copying an unseen name token by token is learnt late
    # (the answer loss drops in a step once it is), so the chat model trains on more chats than
    # one round of a schedule would use well.
    chat = chat_run(chat, "ftmagic/tiny-chat", work, "instruct2", args.instruct2_duration, 1e-3)
    rows.append(run_row("instruction tuning, round 2: tiny-chat", chat))
    export(with_tokenizer(final_model(chat), "ftmagic/tiny-chat", work), "ftmagic/tiny-chat", out)
    # ChatML: the same skills under another template, so a short run from tiny-chat's weights
    # teaches the new turn markers.
    chatml = chat_run(
        chat, "ftmagic/tiny-chatml", work, "instruct", args.chatml_duration, 5e-4, warmup=10
    )
    rows.append(run_row("template tuning: tiny-chatml", chatml))
    name = "ftmagic/tiny-chatml"
    export(with_tokenizer(final_model(chatml), name, work), name, out)
    write_card(out, rows)
    print(f"tokenizer and models: {out} ({tiny.PREFIX}tiny-base, -chat, -chatml)")


def chat_run(
    start: Any, name: str, work: Path, data: str, duration: str, rate: float, warmup: int = 20
) -> Any:
    """An instruction-tuning run from ``start``'s final weights with tiny model ``name``'s
    template, on the ``data``_train/_eval chats."""
    return create(
        model=str(with_tokenizer(final_model(start), name, work)),
        task_type="CHAT_COMPLETION",
        train_data_path=str(work / f"{data}_train.jsonl"),
        eval_data_path=str(work / f"{data}_eval.jsonl"),
        training_duration=duration,
        learning_rate=rate,
        warmup_steps=warmup,
        tokens_per_batch=8192,
        checkpoint_interval="150ba",
    )


def pretrain(args: argparse.Namespace) -> Any:
    """Continued pretraining of a seeded random-init model on the generated text."""
    from ftmagic import tiny

    work = args.work
    tiny.train_shared_tokenizer(tokenizer_texts(work), work / "tokenizer.json")
    init = work / "models" / "init"
    shutil.rmtree(init, ignore_errors=True)
    tiny.build_pretrained_init(work / "tokenizer.json", init)
    return create(
        model=str(init),
        task_type="CONTINUED_PRETRAIN",
        train_data_path=str(work / "text" / "train"),
        eval_data_path=str(work / "text" / "eval"),
        training_duration=args.pretrain_tokens,
        learning_rate=2e-3,
        warmup_steps=60,
        tokens_per_batch=8192,
        context_length=512,
        checkpoint_interval="400ba",
        weight_decay=0.01,
    )


if __name__ == "__main__":
    main()
