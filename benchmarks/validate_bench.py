"""Validation speed and memory on a large JSONL file.

Writes a chat JSONL of ``--size-mb`` (default 1 GB) to a temp folder, validates it with
``ftmagic.validate`` and reports tokens/s and peak RSS. Then, batch by batch over the same file, it
times ftmagic's token counting (``TokenCounter``, the part of validation that replaces per-example
``render``) and a plain batched ``tokenizer(texts)`` call on the same rendered conversations.
Targets: peak RSS under 1 GB; counting at least as fast as ``tokenizer(batch)``. Wall and CPU
seconds are both shown: on a shared machine CPU seconds are the steadier measure.

    .venv/bin/python benchmarks/validate_bench.py --size-mb 100
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ftmagic
from ftmagic import examples
from ftmagic.data.counting import TokenCounter
from ftmagic.data.readers import iter_records
from ftmagic.data.validate import BATCH, batched
from ftmagic.models.loading import load_tokenizer


def conversations(seed: int) -> Iterator[dict]:
    """Endless varied chats built from the bundled shop and drug-name data."""
    rng = random.Random(seed)
    base = []
    for name in ("chat", "ner"):
        with open(examples.path(name, "train"), encoding="utf-8") as handle:
            base += [json.loads(line) for line in handle]
    number = 0
    while True:
        number += 1
        messages = [dict(m) for m in rng.choice(base)["messages"]]
        for message in messages:
            if message["role"] == "user":
                message["content"] += f" (ticket {number}, {rng.random():.6f})"
        yield {"messages": messages}


def write_jsonl(path: Path, size_bytes: int, seed: int) -> int:
    count = written = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in conversations(seed):
            line = json.dumps(record, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode("utf-8"))
            count += 1
            if written >= size_bytes:
                return count
    return count


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process, all threads (the fair measure on a busy machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds spent inside ``with clock:`` blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> None:
        self._start = (time.perf_counter(), cpu_seconds())

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += cpu_seconds() - self._start[1]


def compare_counting(model: str, path: Path) -> tuple[int, Clock, int, Clock]:
    """Batch by batch over the file, time ftmagic's token counting (``TokenCounter.finish``, spot
    checks included) and a plain ``tokenizer(texts)`` call on the same rendered texts, in turn,
    so that both see the same machine load."""
    tokenizer = load_tokenizer(model)
    counter = TokenCounter(tokenizer, "CHAT_COMPLETION")
    counting, plain = Clock(), Clock()
    counted = tokenized = 0
    for batch in batched(iter_records(str(path)), BATCH):
        prepared = counter.prepare(batch)
        texts = [plan[0] for plan in prepared]
        with counting:
            counts = counter.finish(batch, prepared, None)
        with plain:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        counted += sum(c.length for c in counts)  # type: ignore[union-attr]
        tokenized += sum(len(i) for i in ids)
    return counted, counting, tokenized, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="JSONL size (default 1024)")
    parser.add_argument("--model", default="ftmagic/tiny-random-chat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_tokenizer(args.model)  # build and load once, outside the timings
    folder = Path(tempfile.mkdtemp(prefix="ftmagic-validate-bench-"))
    try:
        path = folder / "train.jsonl"
        start = time.perf_counter()
        count = write_jsonl(path, int(args.size_mb * 1024 * 1024), args.seed)
        size_mb = path.stat().st_size / 1024 / 1024
        print(f"wrote {count:,} chats, {size_mb:,.0f} MB in {time.perf_counter() - start:.0f} s")
        rss_before = peak_rss_mb()

        start, start_cpu = time.perf_counter(), cpu_seconds()
        report = ftmagic.validate(model=args.model, train_data_path=str(path), context_length=2048)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        rss = peak_rss_mb()
        tokens = report.total_tokens
        print(f"validate: ok={report.ok} examples={report.num_examples:,} tokens={tokens:,}")
        print(
            f"validate: {seconds:.1f} s wall ({tokens / seconds:,.0f} tokens/s, "
            f"{size_mb / seconds:.1f} MB/s), {cpu:.1f} s CPU ({tokens / cpu:,.0f} tokens/CPU-s)"
        )
        print(f"peak RSS: {rss:,.0f} MB (before validate: {rss_before:,.0f} MB)")

        counted, counting, tokenized, plain = compare_counting(args.model, path)
        for name, tokens_, clock in (
            ("counting (TokenCounter)", counted, counting),
            ("tokenizer(batch) alone", tokenized, plain),
        ):
            print(
                f"{name}: {tokens_:,} tokens, {clock.wall:.1f} s wall "
                f"({tokens_ / clock.wall:,.0f} tokens/s), {clock.cpu:.1f} s CPU "
                f"({tokens_ / clock.cpu:,.0f} tokens/CPU-s)"
            )
        plain_rate = tokenized / plain.wall
        print(
            f"vs tokenizer(batch), wall: counting {counted / counting.wall / plain_rate:.2f}x, "
            f"whole validate {tokens / seconds / plain_rate:.2f}x; per CPU second: counting "
            f"{(counted / counting.cpu) / (tokenized / plain.cpu):.2f}x, whole validate "
            f"{(tokens / cpu) / (tokenized / plain.cpu):.2f}x"
        )
        print(f"peak RSS < 1024 MB: {'met' if rss < 1024 else 'MISSED'}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
