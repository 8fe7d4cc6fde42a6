"""Helpers for the tracking tests: a real ``mlflow server`` on 127.0.0.1, a tiny model, configs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ftmagic.config import RunConfig

VENV_BIN = Path(sys.executable).parent


def make_config(**changes: object) -> RunConfig:
    base: dict[str, object] = {
        "model": "ftmagic/tiny-random-chat",
        "train_data_path": "data/ner.jsonl",
        "eval_prompts": ["Who are you?", "Name the city"],
        "training_duration": "10ba",
    }
    base.update(changes)
    return RunConfig.from_dict(base)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server started with ``start_new_session`` and all its workers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner processes in tests
    return env


def start_mlflow_server(
    db: Path, artifacts: Path, port: int, log: Path, *, proxied: bool = False
) -> subprocess.Popen[bytes]:
    """``mlflow server`` on 127.0.0.1; ``proxied``: clients reach artifacts only over HTTP."""
    root = ["--default-artifact-root", str(artifacts)]
    if proxied:
        root = [
            "--default-artifact-root",
            "mlflow-artifacts:/",
            "--artifacts-destination",
            str(artifacts),
        ]
    command = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        *root,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=90)
    except BaseException:
        stop(proc)
        raise
    return proc


@contextlib.contextmanager
def mlflow_server(
    db: Path, artifacts: Path, port: int, log: Path, *, proxied: bool = False
) -> Iterator[str]:
    proc = start_mlflow_server(db, artifacts, port, log, proxied=proxied)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def build_tiny_model(out: Path) -> Path:
    """A 1-layer Llama with a word-level tokenizer, saved with ``save_pretrained`` (safetensors)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [
        "hello",
        "world",
        "the",
        "a",
        "model",
        "is",
        "good",
        "answer",
        "question",
        "yes",
        "no",
        "what",
        "who",
        "city",
        "name",
    ]
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
