"""Time from running a ``%%finetune`` cell to the run's first loss point, cold and warm.

    python benchmarks/first_curve.py              # 1 cold + 2 warm runs, about a minute
    python benchmarks/first_curve.py --warm 4     # more warm runs
    python benchmarks/first_curve.py --json out.json
    python benchmarks/first_curve.py --uncached   # also warm runs with the kernel's caches cleared

A real ipykernel from this interpreter runs the notebook's cells, as JupyterLab would: ``cold``
is the first ``%%finetune`` cell of a fresh kernel (``%load_ext ftmagic`` already ran, so the
heavy imports are part of it), ``warm`` the same cell run again in that kernel. The clock starts
when the cell is sent and stops when the run's first ``train/loss`` is in MLflow, which is what the
live view draws (it polls every ``refresh_interval``, 1 s by default, so the curve shows up to that
much later). It also reports when setup ended (the TRAIN_STARTED event: data validated, model
loaded, rows packed), which separates ftmagic's own start-up from the first optimizer step. The
run is the built-in ``ftmagic/tiny-random-chat`` on 400 bundled NER chats with
validation on; each run is cancelled after its first point. A warm kernel keeps the model's
weights and the validation report of unchanged data; ``--uncached`` interleaves each warm run with
one that clears those caches first, so both are measured under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

CELL = """%%finetune -o bench_run
model: ftmagic/tiny-random-chat
train_data_path: {train}
training_duration: 200ba
checkpoint_interval: 1000ba
tokens_per_batch: 1024
micro_batch_tokens: 1024
experiment_path: first-curve
"""


def run_code(client: Any, code: str, timeout: float = 300) -> str:
    """Run ``code`` in the kernel; its printed text (an error raises)."""
    printed: list[str] = []

    def keep(message: dict[str, Any]) -> None:
        printed.append(str(message["content"].get("text", "")))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=keep)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {reply['content'].get('evalue')}")
    return "".join(printed)


def first_point_seconds(
    client: Any, cell: str, uri: str, timeout: float = 300
) -> tuple[float, float]:
    """Seconds from sending ``cell`` to the first ``train/loss`` of the run it starts, and to
    its TRAIN_STARTED event (setup done: data validated, model loaded, rows packed)."""
    from mlflow import MlflowClient

    from ftmagic.tracking.run import get_run

    store = MlflowClient(tracking_uri=uri)
    wall = time.time()
    started = time.perf_counter()
    run_code(client, cell)
    run_id = run_code(client, "print(bench_run.run_id)").strip()
    while not store.get_metric_history(run_id, "train/loss"):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"run {run_id} logged no loss in {timeout} s")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    events = get_run(run_id, uri=uri).events
    setup = next(e.time.timestamp() for e in events if e.type == "TRAIN_STARTED") - wall
    run_code(client, "import ftmagic\nftmagic.cancel(bench_run)\nbench_run.wait(timeout=120)")
    return seconds, setup


CLEAR_CACHES = (
    "from ftmagic.models import loading\nfrom ftmagic.data import validate as _v\n"
    "loading.clear_weights_cache()\n_v.clear_validation_cache()"
)


def measure(warm_runs: int, uncached: bool = False) -> dict[str, Any]:
    from jupyter_client.manager import start_new_kernel

    folder = Path(tempfile.mkdtemp(prefix="ftmagic-first-curve-"))
    train = Path(str(resources.files("ftmagic.resources") / "ner" / "train.jsonl"))
    (folder / "train.jsonl").write_text(
        "".join(train.read_text(encoding="utf-8").splitlines(keepends=True)[:400])
    )
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cell = CELL.format(train=folder / "train.jsonl")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(folder))
    try:
        run_code(client, "%load_ext ftmagic")
        cold = first_point_seconds(client, cell, uri)
        warm, cleared = [], []
        for _ in range(warm_runs):
            warm.append(first_point_seconds(client, cell, uri))
            if uncached:
                run_code(client, CLEAR_CACHES)
                cleared.append(first_point_seconds(client, cell, uri))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return {
        "cold_s": round(cold[0], 2),
        "cold_setup_s": round(cold[1], 2),
        "warm_s": [round(w, 2) for w, _ in warm],
        "warm_setup_s": [round(s, 2) for _, s in warm],
        "warm_median_s": round(statistics.median(w for w, _ in warm), 2) if warm else None,
        "uncached_s": [round(w, 2) for w, _ in cleared],
        "uncached_setup_s": [round(s, 2) for _, s in cleared],
        "load_average": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=2, help="warm runs after the cold one")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--uncached", action="store_true", help="also time warm runs with the caches cleared"
    )
    args = parser.parse_args(argv)
    result = measure(args.warm, args.uncached)
    print(
        f"cell to first loss point, cold kernel: {result['cold_s']:.1f} s "
        f"(setup done after {result['cold_setup_s']:.1f} s)"
    )
    print(
        f"cell to first loss point, warm kernel: {result['warm_median_s']:.1f} s (median of "
        f"{', '.join(f'{w:.1f}' for w in result['warm_s'])})"
    )
    print(
        "setup done (TRAIN_STARTED), warm: "
        + ", ".join(f"{w:.1f}" for w in result["warm_setup_s"])
        + " s"
    )
    if result["uncached_s"]:
        print(
            "warm kernel, caches cleared: "
            + ", ".join(f"{w:.1f}" for w in result["uncached_s"])
            + " s (setup done after "
            + ", ".join(f"{w:.1f}" for w in result["uncached_setup_s"])
            + " s)"
        )
    print(f"load average during the run: {result['load_average']} on {result['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
