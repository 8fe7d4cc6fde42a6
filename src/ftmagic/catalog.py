"""The model catalog: which models ftmagic knows, their context lengths and chat-template families.

It lists the hosted product's catalog (with its retirements and replacements), small open models
that suit notebook work, and the built-in tiny models. Any other Hugging Face id in the local cache
or any local model folder also resolves, as an "unlisted" entry read from its ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftmagic.errors import ModelError
from ftmagic.tiny import TINY_MODELS, ensure_tiny_model, is_tiny, param_count

RETIRED_ON = "2024-12-13"


class RetiredModelWarning(UserWarning):
    """The model was retired from the hosted catalog; its replacement is named in the message."""


@dataclass(frozen=True)
class ModelEntry:
    """One model: its id, display name, context length and template family, and whether it is
    retired (with the replacement to use)."""

    name: str
    display_name: str
    context_length: int
    template_family: str
    params: str
    kind: str  # hosted, open, tiny or unlisted
    retired: bool = False
    retired_on: str | None = None
    replacement: str | None = None
    note: str = ""
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ModelList(list[ModelEntry]):
    """A list of ``ModelEntry`` that shows as a table in notebooks."""

    COLUMNS = ("name", "context_length", "params", "template_family", "kind", "status")

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame([entry.to_dict() for entry in self])

    def rows(self) -> list[dict[str, str]]:
        return [
            {
                "name": e.name,
                "context_length": str(e.context_length),
                "params": e.params,
                "template_family": e.template_family,
                "kind": e.kind,
                "status": f"retired {e.retired_on}, use {e.replacement}" if e.retired else "",
            }
            for e in self
        ]

    def __str__(self) -> str:
        rows = self.rows()
        widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in self.COLUMNS}
        lines = ["  ".join(c.ljust(widths[c]) for c in self.COLUMNS).rstrip()]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in self.COLUMNS).rstrip() for r in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in self.COLUMNS) + "</tr>"
            for r in self.rows()
        )
        return f"<table class='ftmagic-models'><tr>{head}</tr>{body}</table>"


def _hosted(
    name: str, ctx: int, family: str, params: str, replacement: str | None = None
) -> ModelEntry:
    retired = replacement is not None
    # The hosted product spelled Llama 3.1 as "Meta-Llama-3.1-..."; Hugging Face renamed them since.
    alias = name.replace("meta-llama/Llama-3.1-", "meta-llama/Meta-Llama-3.1-")
    return ModelEntry(
        name=name,
        display_name=name.split("/")[-1],
        context_length=ctx,
        template_family=family,
        params=params,
        kind="hosted",
        retired=retired,
        retired_on=RETIRED_ON if retired else None,
        replacement=replacement,
        note=f"retired {RETIRED_ON}; use {replacement}" if retired else "",
        aliases=(alias,) if alias != name else (),
    )


def _open(name: str, ctx: int, family: str, params: str, note: str = "") -> ModelEntry:
    return ModelEntry(name, name.split("/")[-1], ctx, family, params, "open", note=note)


L31_8B = "meta-llama/Llama-3.1-8B"
L31_70B = "meta-llama/Llama-3.1-70B"


def _catalog() -> tuple[ModelEntry, ...]:
    hosted = [
        _hosted("meta-llama/Llama-3.1-405B", 131072, "none", "405B"),
        _hosted("meta-llama/Llama-3.1-405B-Instruct", 131072, "llama3", "405B"),
        _hosted(L31_70B, 131072, "none", "70B"),
        _hosted(f"{L31_70B}-Instruct", 131072, "llama3", "70B"),
        _hosted(L31_8B, 131072, "none", "8B"),
        _hosted(f"{L31_8B}-Instruct", 131072, "llama3", "8B"),
        _hosted("meta-llama/Llama-3.2-1B", 131072, "none", "1B"),
        _hosted("meta-llama/Llama-3.2-1B-Instruct", 131072, "llama3", "1B"),
        _hosted("meta-llama/Llama-3.2-3B", 131072, "none", "3B"),
        _hosted("meta-llama/Llama-3.2-3B-Instruct", 131072, "llama3", "3B"),
        _hosted("meta-llama/Llama-3.3-70B-Instruct", 131072, "llama3", "70B"),
        _hosted("databricks/dbrx-base", 32768, "none", "132B"),
        _hosted("databricks/dbrx-instruct", 32768, "chatml", "132B"),
        _hosted("mistralai/Mistral-7B-v0.1", 32768, "none", "7B"),
        _hosted("mistralai/Mistral-7B-Instruct-v0.2", 32768, "mistral", "7B"),
        _hosted("mistralai/Mixtral-8x7B-v0.1", 32768, "none", "47B"),
        _hosted("mistralai/Mixtral-8x7B-Instruct-v0.1", 32768, "mistral", "47B"),
        # Retired on 2024-12-13, each pointing at its replacement.
        _hosted("meta-llama/Meta-Llama-3-8B", 8192, "none", "8B", L31_8B),
        _hosted("meta-llama/Meta-Llama-3-8B-Instruct", 8192, "llama3", "8B", f"{L31_8B}-Instruct"),
        _hosted("meta-llama/Meta-Llama-3-70B", 8192, "none", "70B", L31_70B),
        _hosted(
            "meta-llama/Meta-Llama-3-70B-Instruct", 8192, "llama3", "70B", f"{L31_70B}-Instruct"
        ),
        _hosted("meta-llama/Llama-2-7b-hf", 4096, "none", "7B", "meta-llama/Llama-3.2-3B"),
        _hosted(
            "meta-llama/Llama-2-7b-chat-hf",
            4096,
            "llama2",
            "7B",
            "meta-llama/Llama-3.2-3B-Instruct",
        ),
        _hosted("meta-llama/Llama-2-13b-hf", 4096, "none", "13B", L31_8B),
        _hosted("meta-llama/Llama-2-13b-chat-hf", 4096, "llama2", "13B", f"{L31_8B}-Instruct"),
        _hosted("meta-llama/Llama-2-70b-hf", 4096, "none", "70B", L31_70B),
        _hosted("meta-llama/Llama-2-70b-chat-hf", 4096, "llama2", "70B", f"{L31_70B}-Instruct"),
    ]
    for size, target in (("7b", L31_8B), ("13b", L31_8B), ("34b", L31_70B)):
        base = f"codellama/CodeLlama-{size}"
        hosted.append(_hosted(f"{base}-hf", 16384, "none", size.upper(), target))
        hosted.append(_hosted(f"{base}-Python-hf", 16384, "none", size.upper(), target))
        hosted.append(
            _hosted(f"{base}-Instruct-hf", 16384, "llama2", size.upper(), f"{target}-Instruct")
        )
    small = [
        _open("Qwen/Qwen2.5-0.5B-Instruct", 32768, "chatml", "0.5B", "fits any laptop"),
        _open("Qwen/Qwen2.5-1.5B-Instruct", 32768, "chatml", "1.5B"),
        _open("HuggingFaceTB/SmolLM2-135M-Instruct", 8192, "chatml", "135M", "fits any laptop"),
        _open("HuggingFaceTB/SmolLM2-360M-Instruct", 8192, "chatml", "360M", "fits any laptop"),
        _open("HuggingFaceTB/SmolLM2-1.7B-Instruct", 8192, "chatml", "1.7B"),
        _open("microsoft/Phi-3.5-mini-instruct", 131072, "phi3", "3.8B"),
        _open("google/gemma-2-2b-it", 8192, "gemma", "2.6B"),
        _open("mistralai/Mistral-7B-Instruct-v0.3", 32768, "mistral", "7B"),
    ]
    tiny = [
        ModelEntry(
            name=spec.name,
            display_name=spec.name.split("/")[-1],
            context_length=spec.context_length,
            template_family=spec.template_family,
            params=f"{param_count(spec) / 1e6:.2f}M",
            kind="tiny",
            note=(
                "built-in pretrained model, ships with ftmagic (see its model card)"
                if spec.pretrained
                else "built-in random-init model for tests; built on first use"
            ),
        )
        for spec in TINY_MODELS.values()
    ]
    return (*hosted, *small, *tiny)


CATALOG: tuple[ModelEntry, ...] = _catalog()
"""Every listed model (an immutable constant)."""


def get_models(include_retired: bool = True) -> ModelList:
    """The catalog: hosted-product models, small open models and the built-in tiny models."""
    return ModelList(e for e in CATALOG if include_retired or not e.retired)


def find_entry(name: str) -> ModelEntry | None:
    """The catalog entry whose name or display name is ``name`` (case-insensitive), if any."""
    wanted = name.strip().lower()
    for entry in CATALOG:
        names = (entry.name, entry.display_name, *entry.aliases)
        if wanted in (n.lower() for n in names):
            return entry
    return None


def retired_note(entry: ModelEntry) -> str | None:
    """``"X was retired on D; use Y instead."`` for a retired model, else None."""
    if not entry.retired:
        return None
    return f"{entry.name} was retired on {entry.retired_on}; use {entry.replacement} instead."


def resolve_model(name: str, *, warn: bool = True) -> ModelEntry:
    """The entry for a catalog name, a local model folder or a Hugging Face id in the local cache.

    Retired models warn with ``RetiredModelWarning`` naming the replacement (``warn=False``: the
    caller reads ``retired_note`` instead). Unknown names raise ``ModelError`` listing close
    matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError("model: no model given. Fix: set model, e.g. 'ftmagic/tiny-chat'.")
    entry = find_entry(name)
    if entry is not None:
        note = retired_note(entry)
        if note and warn:
            warnings.warn(note, RetiredModelWarning, stacklevel=2)
        return entry
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return _unlisted(name, _read_local_config(folder), "local folder")
    config = _cached_hf_config(name)
    if config is not None:
        return _unlisted(name, config, "Hugging Face cache")
    raise ModelError(_unknown_message(name))


def _unlisted(name: str, config: dict[str, Any], where: str) -> ModelEntry:
    context = config.get("max_position_embeddings") or config.get("n_positions") or 2048
    return ModelEntry(
        name=name,
        display_name=name.rstrip("/").split("/")[-1],
        context_length=int(context),
        template_family="unknown",
        params="?",
        kind="unlisted",
        note=f"unlisted model from the {where}: not in ftmagic's catalog, so not checked by it",
    )


def _read_local_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model '{folder}': its config.json cannot be read ({err}). "
            "Fix: point model at a folder written by save_pretrained."
        ) from None
    return _text_config(data)


def _text_config(data: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs keep the language model's settings under text_config.
    nested = data.get("text_config")
    return nested if isinstance(nested, dict) and "max_position_embeddings" in nested else data


def _cached_hf_config(name: str) -> dict[str, Any] | None:
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.to_dict()


def _unknown_message(name: str) -> str:
    names = [e.name for e in CATALOG] + [e.display_name for e in CATALOG]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    full = []
    for c in close:
        entry = find_entry(c)
        if entry is not None and entry.name not in full:
            full.append(entry.name)
    hint = f"did you mean {', '.join(repr(c) for c in full)}?" if full else ""
    return (
        f"model '{name}' is not in the catalog, not a local folder with a config.json and not in "
        f"the local Hugging Face cache. {hint} Fix: pick a name from ftmagic.get_models(), pass "
        "a folder written by save_pretrained, or download the model into the Hugging Face cache."
    ).replace("  ", " ")


def model_path(name: str) -> str:
    """Where to load ``name`` from: the built tiny model's folder, else the name itself."""
    entry = find_entry(name) if isinstance(name, str) else None
    if entry is not None and is_tiny(entry.name):
        return str(ensure_tiny_model(entry.name))
    return name
