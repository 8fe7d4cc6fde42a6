"""Show a user error (``FtmagicError``) in a notebook as a short message, never a traceback."""

from __future__ import annotations

import html

from ftmagic.errors import ConfigError, DataError, FtmagicError, ValidationFailed

_BOX = (
    "<div style='border-left:4px solid #c62828;background:#fdecea;padding:6px 10px;"
    "font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap'>{}</div>"
)


def error_title(err: FtmagicError) -> str:
    """A few words naming the kind of problem."""
    if isinstance(err, ConfigError):
        return "Config error"
    if isinstance(err, (DataError, ValidationFailed)):
        return "Data error"
    return "ftmagic error"


def error_text(err: FtmagicError) -> str:
    """The plain-text message: the title, then ``str(err)`` (which names the location and fix)."""
    return f"{error_title(err)}: {err}"


def error_html(err: FtmagicError) -> str:
    """The same message as a small red box."""
    title = html.escape(error_title(err))
    body = html.escape(str(err))
    return _BOX.format(f"<b>{title}</b>: {body}")


def message_html(text: str, *, color: str = "#c62828") -> str:
    """A short colored line of escaped text, for messages shown inside widgets."""
    return f"<span style='color:{color}'>{html.escape(text, quote=False)}</span>"


def show_error(err: FtmagicError) -> None:
    """Display ``err`` with an HTML and a plain-text representation (the frontend picks one)."""
    from IPython.display import display

    display({"text/html": error_html(err), "text/plain": error_text(err)}, raw=True)
