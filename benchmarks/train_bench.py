"""Training speed: ftmagic against TRL's SFTTrainer, same model, data and token budget, one run.

    .venv/bin/python benchmarks/train_bench.py            # all configurations, a Markdown table
    .venv/bin/python benchmarks/train_bench.py --steps 10 # a quicker, noisier look

Every configuration trains the built-in random-init ``ftmagic/tiny-random-chat`` (2 layers, width
128, 4 heads, 2 KV heads, MLP 344, 2,048-token vocabulary, tied embeddings) from the same weights,
on the same 2,000 synthetic drug-name-extraction chats of 1-3 turns (built from the bundled NER data
with a fixed seed), with the loss on assistant tokens only, about 4,096 real tokens per optimizer
step, AdamW at a constant learning rate, and ``--steps`` counted steps after ``--warmup`` warm-up
steps. Each configuration runs in its own subprocess, one after another, so peak RSS is its own,
once per seed (``--seeds``), seed by seed. Reported, as means over the seeds: real (non-pad)
tokens/s over the counted steps, the padding fraction, peak RSS, the final loss (mean of the last
five steps, with half its range over the seeds as the noise) and ratios against TRL.

- ``ftmagic``: the trainer's packed rows (``pack_length`` matched to the data), no MLflow.
- ``ftmagic + MLflow``: the same with per-step metrics to a SQLite MLflow store, heartbeat and
  cancel polling, while a live consumer thread reads the metrics back every 0.5 s (as the live
  view does).
- ``ftmagic, no packing``: one padded example per row (the baseline of the same loop).
- ``TRL packing`` (best-fit decreasing, padding-free) and ``TRL no packing`` (padded batches).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

MODEL = "ftmagic/tiny-random-chat"
LR = 1e-3
SEED = 17
CONFIGS = ("ftmagic", "ftmagic+mlflow", "ftmagic-padded", "trl-packed", "trl-padded")
LABELS = {
    "ftmagic": "ftmagic (packed)",
    "ftmagic+mlflow": "ftmagic (packed) + MLflow + live reader",
    "ftmagic-padded": "ftmagic, no packing",
    "trl-packed": "TRL SFTTrainer, packing (BFD, padding-free)",
    "trl-padded": "TRL SFTTrainer, no packing",
}


# --- data -------------------------------------------------------------------------------------


def make_chats(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` chats of 1-3 user/assistant turns, made from the bundled NER examples."""
    source = resources.files("ftmagic.resources") / "ner" / "train.jsonl"
    singles = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            picked = rng.sample(singles, rng.choice((1, 2, 3)))
            messages = [picked[0]["messages"][0]]
            for chat in picked:
                messages += chat["messages"][1:]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def ftmagic_config(data: Path, steps: int, *, packing: bool, seed: int = SEED) -> Any:
    from ftmagic.config import RunConfig

    return RunConfig(
        model=MODEL,
        train_data_path=str(data),
        training_duration=f"{steps}ba",
        checkpoint_interval="1000000ba",
        tokens_per_batch=4096,
        micro_batch_tokens=16384,  # one forward pass per step, as TRL does
        learning_rate=LR,
        lr_schedule="constant",
        warmup_steps=0,
        seed=seed,
        packing=packing,
        validate_inputs=False,
        experiment_path="train-bench",
    )


def tokenized(config: Any) -> tuple[Any, list[Any]]:
    from ftmagic.data.dataset import load_examples
    from ftmagic.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    return tokenizer, load_examples(config, tokenizer, split="train")


# --- one configuration per subprocess -----------------------------------------------------------


def run_ftmagic(
    data: Path, steps: int, warmup: int, *, packing: bool, mlflow: bool, seed: int
) -> dict[str, Any]:
    from ftmagic.train import trainer
    from ftmagic.train.distributed import setup as setup_distributed
    from ftmagic.train.loop import train_loop
    from ftmagic.train.reporter import MlflowReporter

    config = ftmagic_config(data, steps + warmup, packing=packing, seed=seed)
    tokenizer, examples = tokenized(config)
    run_id = "no-mlflow"
    if mlflow:
        from ftmagic.tracking import store

        run_id = store.create_run(config, backend="inkernel")
    reporter = MlflowReporter(run_id, enabled=mlflow)
    reporter.start_heartbeat()  # as trainer.train does; nothing without MLflow
    prepared = trainer.PreparedData(tokenizer, 2048, examples, [])
    ctx = setup_distributed(config)
    session = trainer.setup(config, run_id, ctx, reporter, prepared, None)
    session.plan.checkpoint_after = set()
    stamps: list[float] = [time.perf_counter()]
    losses: list[float] = []

    def on_step(report: Any) -> None:
        stamps.append(time.perf_counter())
        losses.append(report.loss)

    stop_reader = threading.Event()
    reader = threading.Thread(target=live_reader, args=(run_id, stop_reader), daemon=True)
    if mlflow:
        reader.start()
    train_loop(session, None, on_step)
    reporter.close()
    stop_reader.set()
    counted = session.plan.steps[warmup:]
    slots = sum(batch_slots(session, s) for s in counted)
    real = sum(s.tokens for s in counted)
    return {
        "tokens_per_s": real / (stamps[-1] - stamps[warmup]),
        "padding": 1 - real / slots,
        "final_loss": sum(losses[-5:]) / 5,
        "tokens_per_step": real / len(counted),
    }


def batch_slots(session: Any, step: Any) -> int:
    """Token slots (real and pad) of a step's micro-batches: padded rows are as long as the
    longest in their micro-batch, packed rows are ``pack_length``."""
    from ftmagic.train.loop import rank_micro_batches

    plan = session.plan
    total = 0
    for rows, _weight in rank_micro_batches(session, step):
        total += len(rows) * max(plan.row_width(r) for r in rows)
    return total


def live_reader(run_id: str, stop: threading.Event) -> None:
    """Read the run's metrics back twice a second, as the notebook's live view does."""
    import mlflow

    client = mlflow.MlflowClient()
    while not stop.wait(0.5):
        client.get_metric_history(run_id, "train/loss")


def run_trl(data: Path, steps: int, warmup: int, *, packing: bool, seed: int) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftmagic.models.loading import load_model

    config = ftmagic_config(data, steps + warmup, packing=packing, seed=seed)
    tokenizer, examples = tokenized(config)
    rows = {
        "input_ids": [list(e.input_ids) for e in examples],
        "labels": [labels_of(e) for e in examples],
    }
    mean_length = sum(len(r) for r in rows["input_ids"]) / len(examples)
    batch = 1 if packing else max(1, round(4096 / mean_length))
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        max_steps=steps + warmup,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        packing=packing,
        max_length=4096 if packing else 2048,
        seed=seed,
        dataloader_num_workers=0,
        use_cpu=True,
        bf16=False,
        optim="adamw_torch",
        disable_tqdm=True,
    )
    stamps: list[float] = []
    losses: list[float] = []
    counts: list[tuple[int, int]] = []

    class Timer(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: Any = None, **k: Any
        ) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(
        model=load_model(MODEL),
        args=args,
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    collate = trainer.data_collator

    def counting(features: Any) -> Any:
        out = collate(features)
        mask = out.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(out["input_ids"].numel())
        counts.append((real, int(out["input_ids"].numel())))
        return out

    trainer.data_collator = counting
    torch.manual_seed(seed)
    trainer.train()
    counted = counts[warmup : steps + warmup]
    real = sum(c[0] for c in counted)
    return {
        "tokens_per_s": real / (stamps[-1] - stamps[warmup]),
        "padding": 1 - real / sum(c[1] for c in counted),
        "final_loss": sum(losses[-5:]) / 5,
        "tokens_per_step": real / len(counted),
    }


def labels_of(example: Any) -> list[int]:
    """Hugging Face labels: the token where trained, -100 elsewhere and on the first token."""
    labels = [
        t if trained else -100
        for t, trained in zip(example.input_ids, example.trained, strict=True)
    ]
    return [-100, *labels[1:]]


def run_one(name: str, data: Path, steps: int, warmup: int, seed: int) -> dict[str, Any]:
    if name.startswith("ftmagic"):
        packing, mlflow = name != "ftmagic-padded", name == "ftmagic+mlflow"
        result = run_ftmagic(data, steps, warmup, packing=packing, mlflow=mlflow, seed=seed)
    else:
        result = run_trl(data, steps, warmup, packing=name == "trl-packed", seed=seed)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# --- the whole comparison -----------------------------------------------------------------------


def mean(runs: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown table: each configuration's mean over its seeds, the final loss with its
    spread (half the range over seeds), and the ratios and overhead computed from the means."""
    speed = {name: mean(runs, "tokens_per_s") for name, runs in results.items()}
    lines = [
        "| configuration | real tokens/s | vs TRL packing | vs TRL no packing | padding "
        "| real tokens/step | peak RSS MiB | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        vs = f"{ratio(speed[name], speed.get('trl-packed'))} | "
        vs += ratio(speed[name], speed.get("trl-padded"))
        losses = [r["final_loss"] for r in runs]
        spread = (max(losses) - min(losses)) / 2
        lines.append(
            f"| {LABELS[name]} | {speed[name]:,.0f} | {vs} | {mean(runs, 'padding'):.1%} "
            f"| {mean(runs, 'tokens_per_step'):,.0f} | {mean(runs, 'peak_rss_mib'):,.0f} "
            f"| {mean(runs, 'final_loss'):.3f} ± {spread:.3f} |"
        )
    if "ftmagic" in speed and "ftmagic+mlflow" in speed:
        overhead = 1 - speed["ftmagic+mlflow"] / speed["ftmagic"]
        lines.append(f"\nMLflow logging + live reader overhead: {overhead:.1%}")
    seeds = len(next(iter(results.values()), []))
    lines.append(f"Means over {seeds} seed(s) per configuration; ± is half the range.")
    return "\n".join(lines)


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="counted optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted steps first")
    parser.add_argument("--examples", type=int, default=2000, help="synthetic chats")
    parser.add_argument(
        "--seeds", type=int, default=2, help="runs per configuration, each with its own seed"
    )
    parser.add_argument("--only", choices=CONFIGS, action="append", help="run just these")
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.steps, args.warmup, args.seed)))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="ftmagic-bench-"))
    data = make_chats(workdir / "chats.jsonl", args.examples)
    results: dict[str, list[dict[str, Any]]] = {}
    # Seed by seed through all configurations, so a slow spell of the machine hits them alike.
    for seed in range(SEED, SEED + args.seeds):
        for name in args.only or CONFIGS:
            result = run_in_subprocess(name, data, args, seed, workdir)
            if result is not None:
                results.setdefault(name, []).append(result)
    print(table(results))
    return 0


def run_in_subprocess(
    name: str, data: Path, args: argparse.Namespace, seed: int, workdir: Path
) -> dict[str, Any] | None:
    command = [
        sys.executable, __file__, "--one", name, "--data", str(data), "--seed", str(seed),
        "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]  # fmt: skip
    env_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    done = subprocess.run(
        command, capture_output=True, text=True, env={**_env(), "MLFLOW_TRACKING_URI": env_uri}
    )
    if done.returncode != 0:
        print(f"{name} (seed {seed}) failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name} (seed {seed}): {result['tokens_per_s']:,.0f} real tokens/s", file=sys.stderr)
    return result


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


if __name__ == "__main__":
    sys.exit(main())
