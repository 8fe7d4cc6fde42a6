"""Peak memory of real CPU training steps, measured, against ftmagic's estimate.

    python benchmarks/memory_bench.py logits     # chunked loss vs full logits, 128k vocabulary
    python benchmarks/memory_bench.py estimate   # the memory estimate against measured peaks

Every measurement runs in a fresh process: the model and batch are built, the kernel's peak-RSS
mark is reset (``/proc/self/clear_refs``), one training step runs, and the peak RSS above the
resident size before the step is the step's peak memory (``VmHWM`` minus ``VmRSS``, Linux only).

``logits``: one packed row of ``--tokens`` trained tokens through a tiny Llama (hidden 64, two
layers) with a ``--vocab`` vocabulary, forward and backward, with the full-vocabulary logits
(``loss_chunk_tokens: 0``) and with the chunked loss. The two losses must agree to 1e-5.

``estimate``: full fine-tuning steps (AdamW, so the optimizer states are created) of tiny Llamas
of three or more sizes, measured peak against ``ftmagic.models.memory.estimate`` for the same
shape, batch and settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the peak-RSS mark; returns the resident bytes now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_since_reset() -> int:
    return _status_kib("VmHWM") * 1024


def tiny_llama(vocab: int, hidden: int, layers: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def packed_batch(vocab: int, rows: int, tokens: int, examples_per_row: int = 4) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (rows, tokens), generator=gen)
    length = tokens // examples_per_row
    positions = torch.arange(tokens) % length
    return {
        "input_ids": input_ids,
        "position_ids": positions.repeat(rows, 1),
        "labels": input_ids.clone(),
    }


# --- one measurement, in its own process ------------------------------------------------------


def measure_step(spec: dict[str, Any]) -> dict[str, Any]:
    """One training step of ``spec``'s model; its peak memory above the resident size before."""
    import gc

    import torch

    from ftmagic.train.loss import loss_sum

    torch.set_num_threads(1)
    model = tiny_llama(spec["vocab"], spec["hidden"], spec["layers"])
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    batch = packed_batch(spec["vocab"], spec["rows"], spec["tokens"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if spec.get("optimizer") else None
    gc.collect()
    before = reset_peak()
    loss = loss_sum(model, batch, spec["chunk"])
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    peak = peak_since_reset()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    return {"peak_bytes": peak - before, "mean_loss": float(loss) / trained}


def run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "_measure", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- the chunked loss ----------------------------------------------------------------------------


def logits_bench(vocab: int, tokens: int, chunk: int) -> dict[str, Any]:
    base = {"vocab": vocab, "hidden": 64, "layers": 2, "rows": 1, "tokens": tokens}
    full = run_isolated({**base, "chunk": 0})
    chunked = run_isolated({**base, "chunk": chunk})
    return {
        "vocab": vocab,
        "tokens": tokens,
        "chunk": chunk,
        "full_mib": full["peak_bytes"] / MIB,
        "chunked_mib": chunked["peak_bytes"] / MIB,
        "saving": 1 - chunked["peak_bytes"] / full["peak_bytes"],
        "full_loss": full["mean_loss"],
        "chunked_loss": chunked["mean_loss"],
        "loss_difference": abs(full["mean_loss"] - chunked["mean_loss"]),
    }


def format_logits(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"vocabulary {result['vocab']:,}, one packed row of {result['tokens']:,} trained "
            f"tokens, chunks of {result['chunk']:,}",
            "| loss | peak step memory (MiB) | mean loss |",
            "|---|---:|---:|",
            f"| full logits | {result['full_mib']:,.0f} | {result['full_loss']:.6f} |",
            f"| chunked | {result['chunked_mib']:,.0f} | {result['chunked_loss']:.6f} |",
            f"saving {result['saving']:.0%}, loss difference {result['loss_difference']:.1e}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "_measure":
        spec = json.loads(args[1])
        measure = measure_run if spec.get("mode") == "run" else measure_step
        print(json.dumps(measure(spec)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    logits = sub.add_parser("logits", help="chunked loss against full logits")
    logits.add_argument("--vocab", type=int, default=128256)
    logits.add_argument("--tokens", type=int, default=2048)
    logits.add_argument("--chunk", type=int, default=1024)
    sub.add_parser("estimate", help="the memory estimate against measured peaks")
    options = parser.parse_args(args)
    if options.command == "logits":
        result = logits_bench(options.vocab, options.tokens, options.chunk)
        print(format_logits(result))
        return 0 if result["loss_difference"] < 1e-5 else 1
    return estimate_main()


# --- the memory estimate --------------------------------------------------------------------------

# (name, vocab, hidden, layers, tokens, method, gradient checkpointing, loss chunk)
ESTIMATE_CASES: list[tuple[str, int, int, int, int, str, bool, int]] = [
    ("S full", 32000, 128, 2, 1024, "full", False, 0),
    ("M full", 32000, 256, 4, 2048, "full", False, 0),
    ("L full", 32000, 512, 6, 2048, "full", False, 0),
    ("L full, chunked loss, checkpointing", 32000, 512, 6, 2048, "full", True, 1024),
    ("L LoRA r16", 32000, 512, 6, 2048, "lora", False, 0),
]


def warm_up_imports(method: str) -> None:
    """Import and run what a step uses once on a throwaway model, so the modules and kernels
    it loads lazily are not counted as the step's memory."""
    from ftmagic.train.loss import loss_sum

    model = tiny_llama(64, 32, 1)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    loss_sum(model, packed_batch(64, 1, 64), 16).backward()
    loss_sum(model, packed_batch(64, 1, 64), 0).backward()


def measure_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of a steady-state training step (the second), above the process before the
    model was built: weights, optimizer state, activations, logits and gradients together."""
    import gc

    import torch

    from ftmagic.train.loss import loss_sum

    torch.set_num_threads(1)
    warm_up_imports(spec["method"])
    baseline = reset_peak()
    model = tiny_llama(spec["vocab"], spec["hidden"], spec["layers"])
    model.config.use_cache = False
    if spec["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
        model = get_peft_model(model, lora)
    model.train()
    batch = packed_batch(spec["vocab"], 1, spec["tokens"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    for step in range(2):
        if step == 1:
            gc.collect()
            reset_peak()
        loss_sum(model, batch, spec["chunk"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"peak_bytes": peak_since_reset() - baseline}


def estimated_bytes(spec: dict[str, Any]) -> int:
    from ftmagic.models.memory import MemorySetup, ModelShape, estimate

    hidden = spec["hidden"]
    shape = ModelShape(
        hidden=hidden,
        layers=spec["layers"],
        heads=max(1, hidden // 32),
        kv_heads=max(1, hidden // 64),
        head_dim=32,
        intermediate=4 * hidden,
        vocab=spec["vocab"],
        tied=False,
    )
    setup = MemorySetup(
        method=spec["method"],
        micro_batch_tokens=spec["tokens"],
        row_tokens=spec["tokens"],
        gradient_checkpointing=spec["checkpointing"],
        loss_chunk_tokens=spec["chunk"],
    )
    return estimate(shape, setup).peak


def estimate_rows() -> list[dict[str, Any]]:
    rows = []
    for name, vocab, hidden, layers, tokens, method, checkpointing, chunk in ESTIMATE_CASES:
        spec = {
            "mode": "run",
            "vocab": vocab,
            "hidden": hidden,
            "layers": layers,
            "tokens": tokens,
            "method": method,
            "checkpointing": checkpointing,
            "chunk": chunk,
        }
        measured = run_isolated(spec)["peak_bytes"]
        guess = estimated_bytes(spec)
        rows.append({**spec, "name": name, "measured": measured, "estimated": guess})
        print(f"{name}: estimated {guess / MIB:,.0f} MiB, measured {measured / MIB:,.0f} MiB")
    return rows


def format_estimate(rows: list[dict[str, Any]]) -> str:
    from ftmagic.models.memory import ModelShape

    lines = [
        "| model | params | tokens | estimated (MiB) | measured (MiB) | estimate/measured |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        hidden = row["hidden"]
        shape = ModelShape(
            hidden,
            row["layers"],
            hidden // 32,
            max(1, hidden // 64),
            32,
            4 * hidden,
            row["vocab"],
            False,
        )
        lines.append(
            f"| {row['name']} (h{hidden}, {row['layers']} layers, vocab {row['vocab']:,}) "
            f"| {shape.parameters / 1e6:.1f}M | {row['tokens']:,} "
            f"| {row['estimated'] / MIB:,.0f} | {row['measured'] / MIB:,.0f} "
            f"| {row['estimated'] / row['measured']:.2f} |"
        )
    return "\n".join(lines)


def estimate_main() -> int:
    rows = estimate_rows()
    print(format_estimate(rows))
    worst = max(abs(row["estimated"] / row["measured"] - 1) for row in rows)
    return 0 if worst <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
