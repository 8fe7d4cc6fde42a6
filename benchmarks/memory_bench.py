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
of three or more sizes, measured peak against ``ftmagic.train.memory.estimate`` for the same
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

    from ftmagic.train.trainer import loss_sum

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
        print(json.dumps(measure_step(json.loads(args[1]))))
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


def estimate_main() -> int:
    raise SystemExit("the estimate check comes with ftmagic.train.memory")


if __name__ == "__main__":
    sys.exit(main())
