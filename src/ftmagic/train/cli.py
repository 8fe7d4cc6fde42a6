"""``ftmagic train`` and ``ftmagic demo``: headless training in this process, with a progress bar
and a closing summary that says where everything is.

``ftmagic.cli`` parses the arguments and calls these; they print (the core only logs). Exit codes:
0 when the run completed or was stopped on request, 1 when it failed, 2 for wrong arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmagic.config import RunConfig
from ftmagic.tracking.state import RunStatus

if TYPE_CHECKING:
    from ftmagic.train.trainer import TrainResult

DEMO_MODEL_NAME = "ftmagic.demo.ner_tiny"
DEMO_PROMPTS = 2  # held-out sentences whose generations are logged at each checkpoint
DEMO_SCORED = 20  # held-out chats scored at the end


def train_command(config: RunConfig, *, run_id: str | None = None, resume: bool = False) -> int:
    """Train ``config`` here and now (creating its MLflow run unless ``run_id`` names one) and
    print a summary. Ctrl-C or SIGTERM stops after the current step with a final checkpoint."""
    result = train_here(config, run_id=run_id, resume=resume)
    if result is None:
        return 2
    return 1 if result.status == RunStatus.FAILED else 0


def train_here(
    config: RunConfig, *, run_id: str | None = None, resume: bool = False
) -> TrainResult | None:
    """``train_command``'s work; the result, or None (and a message) for wrong arguments."""
    from ftmagic import quiet
    from ftmagic.tracking import store
    from ftmagic.train.trainer import train

    quiet.set_verbose(config.verbose)
    if resume and run_id is None:
        print(
            "ftmagic train: --resume needs --run-id RUN_ID (the run to continue)", file=sys.stderr
        )
        return None
    if run_id is None and _world_size() > 1:
        print("ftmagic train: several processes need --run-id (one run for all)", file=sys.stderr)
        return None
    is_main = os.environ.get("RANK", "0") == "0"
    if run_id is None:
        run_id = store.create_run(config, backend="local")
    stop = threading.Event()
    with _stop_on_signals(stop), ProgressBar(enabled=is_main) as bar:
        result = train(config, run_id, stop_event=stop, resume=resume, progress=bar.update)
    if is_main:
        print(summary(result))
    return result


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class ProgressBar:
    """A tqdm bar fed by the trainer's progress hook (steps, loss, tokens/s)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, report: Any) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=report.total_steps, initial=report.step - 1, unit="step")
        self._bar.n = report.step
        self._bar.set_postfix(loss=f"{report.loss:.4f}", tok_s=f"{report.tokens_per_s:,.0f}")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: stop gracefully (checkpoint, STOPPED). Second Ctrl-C: interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping after this step (again to interrupt)...", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def summary(result: Any) -> str:
    """What happened and where to look, for a person at a terminal."""
    from ftmagic.tracking import store

    lines = [
        f"run {result.run_id}: {result.status}" + (f" ({result.reason})" if result.reason else "")
    ]
    lines.append(f"  steps        {result.steps} of {result.total_steps}, {result.tokens:,} tokens")
    if result.final_loss is not None:
        lines.append(f"  final loss   {result.final_loss:.4f}")
    if result.eval_loss is not None:
        lines.append(f"  eval loss    {result.eval_loss:.4f}")
    lines.append(f"  speed        {result.tokens_per_s:,.0f} tokens/s")
    tracking_uri = store.tracking_uri()
    try:
        artifact_uri = store.client().get_run(result.run_id).info.artifact_uri
        lines.append(f"  checkpoints  {artifact_uri}/checkpoints")
    except Exception:
        lines.append(f"  checkpoints  in run {result.run_id} at {tracking_uri}")
    if result.registered_model:
        lines.append(f"  registered   {result.registered_model}")
    lines.append(f"look:  mlflow ui --backend-store-uri {tracking_uri}")
    if result.registered_model:
        lines.append(
            f"serve: MLFLOW_TRACKING_URI={tracking_uri} mlflow models serve "
            f"-m {result.registered_model} --env-manager local --host 127.0.0.1"
        )
    if result.status in (RunStatus.STOPPED, RunStatus.FAILED):
        lines.append(f"resume: ftmagic train CONFIG.yaml --run-id {result.run_id} --resume")
    return "\n".join(lines)


def demo_config() -> RunConfig:
    """Fine-tune the pretrained tiny chat model on the bundled NER chats: about a minute of
    training on 2 calm CPUs."""
    from ftmagic import examples

    test = examples.load("ner", "test")[:DEMO_PROMPTS]
    return RunConfig(
        model="ftmagic/tiny-chat",
        train_data_path=examples.path("ner", "train"),
        eval_data_path=examples.path("ner", "eval"),
        eval_prompts=[examples.prompt_messages(e)[-1]["content"] for e in test],
        register_to=DEMO_MODEL_NAME,
        training_duration="120ba",
        checkpoint_interval="60ba",
        tokens_per_batch=2048,
        micro_batch_tokens=2048,
        learning_rate=1.5e-3,
        warmup_steps=4,
        max_new_tokens=24,
        experiment_path="ftmagic-demo",
    )


def demo_command(*, verbose: bool = False) -> int:
    """Score the tiny chat model on held-out sentences, fine-tune it, register it as
    ``ftmagic.demo.ner_tiny``, score it again and say where to look. ``verbose`` shows
    third-party output too."""
    config = dataclasses.replace(demo_config(), verbose=verbose)
    print(
        f"ftmagic demo: fine-tuning {config.model} to list the drug names in a sentence, on "
        f"{Path(config.train_data_path).name} (bundled NER chats), for {config.training_duration}"
    )
    before = score_demo(config.model)
    print(f"before: {score_line(before)}")
    result = train_here(config)
    if result is None or result.status == RunStatus.FAILED:
        return 1
    if result.registered_model:
        after = score_demo(result.registered_model)
        print(f"before: {score_line(before)}")
        print(f"after:  {score_line(after)}")
        print(f"        e.g. {after['sentence']!r}\n        -> {after['answer']}")
        print(f"try it in Python: ftmagic.get('{result.run_id}').generate('...')")
    return 0


def score_demo(model: str, count: int = DEMO_SCORED) -> dict[str, Any]:
    """Drug-name scores of ``model`` (a catalog name or a registered ``models:/`` URI) on the
    first ``count`` held-out test chats, none of whose drugs is in the training data."""
    from ftmagic import examples
    from ftmagic.models.generation import generate, load_for_inference
    from ftmagic.models.loading import load_model, load_tokenizer
    from ftmagic.tracking import store

    if model.startswith("models:/"):
        weights, tokenizer = load_for_inference(store.download_registered_model(model))
    else:
        weights, tokenizer = load_model(model), load_tokenizer(model)
    test = examples.load("ner", "test")[:count]
    scores = examples.evaluate_ner(
        lambda messages: generate(weights, tokenizer, messages, max_new_tokens=24), test
    )
    scores["sentence"] = test[0]["messages"][1]["content"]
    scores["answer"] = scores["outputs"][0]
    return scores


def score_line(scores: dict[str, Any]) -> str:
    return (
        f"{scores['json_valid']:.0%} valid JSON lists, drug-name F1 {scores['f1']:.2f} "
        f"(precision {scores['precision']:.2f}, recall {scores['recall']:.2f}) on {scores['n']} "
        "held-out sentences with unseen drugs"
    )
