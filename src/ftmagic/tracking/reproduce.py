"""Reproducible runs: what a run was trained with, recorded so that it can be run again.

The trainer records, before its first step, the resolved config (every field plus the values it
derived: learning rate, warmup, pack length, context length, steps), a SHA-256 fingerprint of the
training and eval data, the versions of the packages that decide the numbers, and the seed
(artifact ``reproduce.json``, tags ``ftmagic.data_fingerprint`` and ``ftmagic.env_fingerprint``).
``changes(original, rerun)`` says what differs between two such records.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftmagic.config import RunConfig

RECORD_FILE = "reproduce.json"
DATA_TAG = "ftmagic.data_fingerprint"
ENV_TAG = "ftmagic.env_fingerprint"
RERUN_OF_TAG = "ftmagic.rerun_of"
PACKAGES = (
    "ftmagic", "torch", "transformers", "tokenizers", "peft", "accelerate", "safetensors",
    "numpy", "mlflow",
)  # fmt: skip
CHUNK = 1 << 20


def data_fingerprint(path: str | None) -> str | None:
    """SHA-256 of ``path`` (a local path or fsspec URL): a file's bytes (as ``sha256sum`` prints
    it), or a folder's files' relative names and bytes in name order. None without a path."""
    if not path:
        return None
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        return "missing"
    folder = fs.isdir(root)
    digest = hashlib.sha256()
    for name in sorted(fs.find(root)) if folder else [root]:
        if folder:
            digest.update(name[len(root) :].encode("utf-8") + b"\0")
        with fs.open(name, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Python and the versions of the packages that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_record(config: RunConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """The record a run logs: config, resolved values, data fingerprints, packages, seed."""
    packages = package_versions()
    data = {
        "train": data_fingerprint(config.train_data_path),
        "eval": data_fingerprint(config.eval_data_path),
    }
    return {
        "config": config.to_dict(),
        "resolved": resolved,
        "seed": config.seed,
        "data": data,
        "packages": packages,
        "data_fingerprint": _digest(data),
        "env_fingerprint": _digest(packages),
    }


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def record(run_id: str, config: RunConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """Build the record of run ``run_id`` and log it to MLflow."""
    from ftmagic.tracking import artifacts, client

    data = build_record(config, resolved)
    artifacts.log_json(run_id, data, RECORD_FILE)
    client.set_tag(run_id, DATA_TAG, data["data_fingerprint"])
    client.set_tag(run_id, ENV_TAG, data["env_fingerprint"])
    return data


def read_record(run_id: str, *, uri: str | None = None) -> dict[str, Any] | None:
    from ftmagic.tracking import artifacts

    return artifacts.read_json(run_id, RECORD_FILE, uri=uri)


def changes(original: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """What differs between two records: data files, package versions, seed, resolved values."""
    found = []
    for split in ("train", "eval"):
        before, after = original["data"].get(split), again["data"].get(split)
        if before != after:
            found.append(f"{split} data changed (sha256 {_short(before)} -> {_short(after)})")
    old, new = original["packages"], again["packages"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            found.append(f"{name} {old.get(name, 'absent')} -> {new.get(name, 'absent')}")
    if original["seed"] != again["seed"]:
        found.append(f"seed {original['seed']} -> {again['seed']}")
    for key in sorted(set(original["resolved"]) | set(again["resolved"])):
        if original["resolved"].get(key) != again["resolved"].get(key):
            was, now = original["resolved"].get(key), again["resolved"].get(key)
            found.append(f"{key} {was} -> {now}")
    return found


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def summary(run_id: str, *, uri: str | None = None) -> str | None:
    """For a rerun: whether its data and environment match the original's; None otherwise."""
    from ftmagic.tracking import client

    original_id = client.client(uri).get_run(run_id).data.tags.get(RERUN_OF_TAG)
    if not original_id:
        return None
    original, again = read_record(original_id, uri=uri), read_record(run_id, uri=uri)
    if original is None:
        return f"rerun of {original_id}, which recorded no data or environment to compare"
    if again is None:
        return f"rerun of {original_id}; its data and environment are not recorded yet"
    found = changes(original, again)
    if not found:
        return f"rerun of {original_id}: same data, packages, seed and settings"
    return f"rerun of {original_id}; changed since: " + "; ".join(found)


def preflight_changes(original_id: str, config: RunConfig, *, uri: str | None = None) -> list[str]:
    """What already differs, seen from here, before a rerun of ``original_id`` with ``config``
    starts: the data files and this environment's package versions against the original's."""
    original = read_record(original_id, uri=uri)
    if original is None:
        return []
    here = {
        "data": {
            "train": data_fingerprint(config.train_data_path),
            "eval": data_fingerprint(config.eval_data_path),
        },
        "packages": package_versions(),
        "seed": config.seed,
        "resolved": {},
    }
    return changes({**original, "resolved": {}}, here)
