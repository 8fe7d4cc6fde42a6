"""Third-party output (progress bars, warnings, log lines of transformers, huggingface_hub and
mlflow) goes to Python logging instead of the notebook or terminal, unless the user asks for it.

By default ftmagic is quiet: ``apply()`` (called wherever those libraries are used) removes the
handlers that transformers and mlflow attach to stderr, lets their loggers propagate to the root
logger (so an application that configures logging still gets them), turns their tqdm bars off
and sends Python warnings raised inside installed libraries to the ``py.warnings`` logger.
``set_verbose(True)`` (``%config FinetuneMagics.verbose = True``, ``--verbose``, a
``verbose: true`` field) puts every library back as it was. ftmagic's own messages and
progress bar are not affected.

Only libraries already imported (or named in ``load``) are touched.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

ENV_SWITCHES = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
LIBRARY_LOGGERS = ("mlflow", "transformers", "huggingface_hub", "alembic", "peft")

_lock = threading.Lock()
_verbose = False
_quieted: set[str] = set()  # libraries quieted now
_saved_loggers: dict[str, tuple[list[logging.Handler], bool]] = {}
_saved_env: dict[str, str | None] = {}
_saved_showwarning: Any = None


def set_verbose(verbose: bool) -> None:
    """Show (True) or route to logging (False) third-party output from now on."""
    global _verbose
    with _lock:
        _verbose = bool(verbose)
    if verbose:
        _restore()
    else:
        apply()


def is_verbose() -> bool:
    return _verbose


def apply(*, load: tuple[str, ...] = ()) -> None:
    """Quiet every library imported so far, after importing those in ``load`` (nothing when
    verbose). Cheap and idempotent."""
    if _verbose:
        return
    for name in load:
        __import__(name)
    with _lock:
        _quiet_env()
        _quiet_warnings()
        for name in LIBRARY_LOGGERS:
            if name not in _quieted and name in sys.modules:
                _quiet_logger(name)
                _quieted.add(name)
        if "transformers" in sys.modules and "transformers-bars" not in _quieted:
            _transformers_bars(enabled=False)
            _quieted.add("transformers-bars")
        if "mlflow" in sys.modules and "mlflow-print" not in _quieted:
            _mlflow_print(enabled=False)
            _quieted.add("mlflow-print")


def _quiet_env() -> None:
    for key, value in ENV_SWITCHES.items():
        if key not in _saved_env:
            _saved_env[key] = os.environ.get(key)
            os.environ[key] = value


def _quiet_logger(name: str) -> None:
    """Drop the library's own stderr handlers; its records propagate to the root logger. The
    NullHandler keeps Python's last-resort handler from printing them when nothing is set up."""
    logger = logging.getLogger(name)
    _saved_loggers[name] = (list(logger.handlers), logger.propagate)
    logger.handlers = [logging.NullHandler()]
    logger.propagate = True


def _transformers_bars(*, enabled: bool) -> None:
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def _mlflow_print(*, enabled: bool) -> None:
    """mlflow prints some notices ("Successfully registered model ...") to its own stream, which
    it switches on and off itself; its ``write`` is replaced rather than the switch."""
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    if enabled:
        stream.__dict__.pop("write", None)
    else:
        stream.write = _log_mlflow_text  # type: ignore[method-assign]


def _log_mlflow_text(text: str) -> None:
    if text.strip():
        logging.getLogger("mlflow").info("%s", text.rstrip())


def _quiet_warnings() -> None:
    """Install the filter again whenever something (``catch_warnings``) has put it aside."""
    global _saved_showwarning
    if warnings.showwarning is not _show_or_log_warning:
        _saved_showwarning = warnings.showwarning
        warnings.showwarning = _show_or_log_warning


def _show_or_log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings raised in installed libraries go to the ``py.warnings`` logger; ftmagic's own and
    the notebook's are shown."""
    installed = any(part in filename for part in ("site-packages", "dist-packages"))
    if _verbose or not installed or category.__module__.startswith("ftmagic"):
        shown = _saved_showwarning or warnings._showwarning_orig  # type: ignore[attr-defined]
        shown(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line)
    logging.getLogger("py.warnings").warning("%s", text.rstrip())


def _restore() -> None:
    global _saved_showwarning
    with _lock:
        for name, (handlers, propagate) in _saved_loggers.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
        _saved_loggers.clear()
        for key, value in _saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _saved_env.clear()
        if warnings.showwarning is _show_or_log_warning:
            warnings.showwarning = _saved_showwarning
        _saved_showwarning = None
        if "transformers-bars" in _quieted:
            _transformers_bars(enabled=True)
        if "mlflow-print" in _quieted:
            _mlflow_print(enabled=True)
        _quieted.clear()
