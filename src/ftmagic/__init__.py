"""ftmagic: fine-tune foundation models from Jupyter.

``import ftmagic`` is cheap: the public functions below import torch, transformers and mlflow only
when they are called. ``%load_ext ftmagic`` registers the ``%%finetune`` and ``%ft`` magics.
"""

from __future__ import annotations

import builtins
import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "get_models": "ftmagic.api",
    "validate": "ftmagic.api",
    "preview": "ftmagic.api",
    "create": "ftmagic.api",
    "get": "ftmagic.api",
    "list": "ftmagic.api",
    "cancel": "ftmagic.api",
    "delete": "ftmagic.api",
    "get_events": "ftmagic.api",
    "get_checkpoints": "ftmagic.api",
    "resume": "ftmagic.api",
    "panel": "ftmagic.ui.panel",
    "serve": "ftmagic.api",
    "promote": "ftmagic.api",
    "rerun": "ftmagic.api",
    "gallery": "ftmagic.api",
    "RunConfig": "ftmagic.config",
    "FtmagicError": "ftmagic.errors",
    "ConfigError": "ftmagic.errors",
    "DataError": "ftmagic.errors",
}

__all__ = [*sorted(_API), "__version__", "load_ipython_extension"]

if TYPE_CHECKING:
    from ftmagic.api import (
        cancel,
        create,
        delete,
        gallery,
        get,
        get_checkpoints,
        get_events,
        get_models,
        list,
        preview,
        promote,
        rerun,
        resume,
        serve,
        validate,
    )
    from ftmagic.config import RunConfig
    from ftmagic.errors import ConfigError, DataError, FtmagicError
    from ftmagic.ui.panel import panel


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ftmagic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ftmagic``: register the magics (IPython is imported only here)."""
    from ftmagic.ui.magics import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> builtins.list[dict[str, str]]:
    return [{"module": "ftmagic.server_extension"}]


def _jupyter_labextension_paths() -> builtins.list[dict[str, str]]:
    return [{"src": "labextension", "dest": "ftmagic"}]
