"""Show one example exactly as training sees it: every token, its id, its role and whether the loss
is computed on it.

The ids and trained flags come from ``render``, the same function the trainer uses, so the preview
cannot drift from training. Roles (system, user, assistant, template, prompt, response, text) are
added on top from the characters each token covers.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ftmagic.data.render import (
    CHAT,
    INSTRUCTION,
    PRETRAIN,
    ChatLayout,
    ChatOptions,
    chat_layout,
    reasoning_of,
    render,
    split_turns,
)
from ftmagic.data.rules import check_record
from ftmagic.errors import DataError

TEMPLATE = "template"
TRAINED_STYLE = "background:#b7eb8f;color:#111"
IGNORED_STYLE = "background:#f3f3f3;color:#9a9a9a"
ALT_SHADE = "filter:brightness(0.93)"


@dataclass(frozen=True)
class TokenView:
    """One token: its text, id, whether it is trained and the role of the text it covers."""

    text: str
    id: int
    trained: bool
    role: str = TEMPLATE


@dataclass
class Preview:
    """One example as the trainer sees it."""

    model: str
    task_type: str
    tokens: list[TokenView]
    truncated: bool = False
    context_length: int | None = None
    trained_by_role: dict[str, int] = field(default_factory=dict)
    untrained_by_role: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    serving_diff: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_trained(self) -> int:
        return sum(t.trained for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task_type": self.task_type,
            "num_tokens": self.num_tokens,
            "num_trained": self.num_trained,
            "truncated": self.truncated,
            "context_length": self.context_length,
            "trained_by_role": dict(self.trained_by_role),
            "untrained_by_role": dict(self.untrained_by_role),
            "notes": list(self.notes),
            "serving_diff": self.serving_diff,
            "tokens": [asdict(t) for t in self.tokens],
        }

    def summary(self) -> str:
        trained = ", ".join(f"{r} {n}" for r, n in self.trained_by_role.items()) or "none"
        ignored = ", ".join(f"{r} {n}" for r, n in self.untrained_by_role.items()) or "none"
        cut = f"; truncated to {self.context_length} tokens" if self.truncated else ""
        return (
            f"{self.model} · {self.task_type} · {self.num_trained} of {self.num_tokens} tokens "
            f"trained (trained: {trained}; ignored: {ignored}){cut}"
        )

    def __str__(self) -> str:
        """The text with each run of trained tokens wrapped in ``[[`` and ``]]``."""
        parts = [self.summary(), "\n", *(f"note: {n}\n" for n in self.remarks())]
        inside = False
        for token in self.tokens:
            if token.trained != inside:
                parts.append("[[" if token.trained else "]]")
                inside = token.trained
            parts.append(token.text)
        if inside:
            parts.append("]]")
        return "".join(parts)

    def remarks(self) -> list[str]:
        """What the template dropped or rewrote, and the training-vs-serving difference."""
        serving = [f"training vs serving: {self.serving_diff}"] if self.serving_diff else []
        return [*self.notes, *serving]

    def _repr_html_(self) -> str:
        spans = [_token_html(token, i) for i, token in enumerate(self.tokens)]
        remarks = "".join(f"<li>{html.escape(r)}</li>" for r in self.remarks())
        if remarks:
            remarks = f"<ul style='color:#9a6700;margin:2px 0'>{remarks}</ul>"
        legend = (
            f"<span style='{TRAINED_STYLE};padding:0 4px'>trained</span> "
            f"<span style='{IGNORED_STYLE};padding:0 4px'>ignored</span>"
        )
        return (
            "<div class='ftmagic-preview'>"
            f"<div style='margin-bottom:4px'>{html.escape(self.summary())} {legend}</div>"
            f"{remarks}"
            "<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>"
            f"{''.join(spans)}</div></div>"
        )


def _token_html(token: TokenView, index: int) -> str:
    style = TRAINED_STYLE if token.trained else IGNORED_STYLE
    if index % 2:
        style += ";" + ALT_SHADE
    shown = html.escape(token.text).replace("\n", "↵\n") or "&#8203;"
    state = "trained" if token.trained else "ignored"
    title = html.escape(f"id {token.id} · {token.role} · {state}", quote=True)
    return (
        f"<span class='ftmagic-token {state}' title=\"{title}\" "
        f"style='{style};border-right:1px solid #d0d0d0;border-radius:2px'>{shown}</span>"
    )


def preview(
    model: str,
    example: dict[str, Any] | str,
    *,
    task_type: str = CHAT,
    context_length: int | None = None,
    chat_turns: str = "all",
    fold_system_prompt: bool = False,
    turn: int = -1,
) -> Preview:
    """Render ``example`` (a dict, a JSON string, or plain text for continued pretraining) with
    ``model``'s tokenizer, exactly as training would, truncating to the context length.

    ``chat_turns`` and ``fold_system_prompt`` are the config fields of the same names; with
    ``chat_turns="split"`` the record makes one example per assistant turn and ``turn`` picks
    which (the last by default).
    """
    from ftmagic.catalog import resolve_model
    from ftmagic.models.loading import load_tokenizer

    task_type = str(task_type).upper()
    data = _as_record(example, task_type)
    problems = check_record(data, task_type, source="<example>", line=1)
    if problems:
        raise problems[0]
    options = ChatOptions(turns=chat_turns, fold_system_prompt=fold_system_prompt)
    if task_type == CHAT and chat_turns == "split":
        data = split_turns(data)[turn]
    limit = context_length or resolve_model(model).context_length
    tokenizer = load_tokenizer(model)
    rendered = render(
        tokenizer, data, task_type, max_length=limit, source="<example>", options=options
    )
    layout = None
    if task_type == CHAT:
        layout = chat_layout(
            tokenizer,
            data["messages"],
            tools=data.get("tools"),
            last_only=chat_turns != "all",
            fold_system=fold_system_prompt,
            source="<example>",
        )
    text, roles = _text_and_roles(data, task_type, layout)
    tokens = _token_views(tokenizer, text, roles, rendered.input_ids, rendered.trained, task_type)
    trained = Counter(t.role for t in tokens if t.trained)
    ignored = Counter(t.role for t in tokens if not t.trained)
    return Preview(
        model=model,
        task_type=task_type,
        tokens=tokens,
        truncated=rendered.truncated,
        context_length=limit,
        trained_by_role=dict(trained.most_common()),
        untrained_by_role=dict(ignored.most_common()),
        notes=list(layout.notes) if layout else [],
        serving_diff=layout.serving_diff if layout else None,
    )


def _as_record(example: dict[str, Any] | str, task_type: str) -> dict[str, Any]:
    if isinstance(example, dict):
        return example
    if not isinstance(example, str):
        raise DataError(
            "the example must be a dict or a JSON string",
            source="<example>",
            value=example,
            fix='pass e.g. {"messages": [...]} or {"prompt": "...", "response": "..."}',
        )
    try:
        data = json.loads(example)
    except json.JSONDecodeError as err:
        if task_type == PRETRAIN:
            return {"text": example}
        raise DataError(
            f"the example is not valid JSON ({err.msg} at character {err.pos})",
            source="<example>",
            value=example,
            fix="pass a dict, or a JSON object string",
        ) from None
    if task_type == PRETRAIN and not isinstance(data, dict):
        return {"text": example}
    if not isinstance(data, dict):
        raise DataError(
            "the example must be a JSON object", source="<example>", value=example, fix=None
        )
    return data


def _text_and_roles(
    data: dict[str, Any], task_type: str, layout: ChatLayout | None
) -> tuple[str, list[str]]:
    """The text ``render`` tokenized and the role of each of its characters."""
    if task_type == CHAT:
        assert layout is not None
        text = layout.text
        roles = [TEMPLATE] * len(text)
        for start, end, role in _message_spans(text, data["messages"]):
            roles[start:end] = [role] * (end - start)
        for start, end in layout.turn_spans.values():
            roles[start:end] = ["assistant"] * (end - start)
        return text, roles
    if task_type == INSTRUCTION:
        response = data.get("response", data.get("completion", ""))
        return data["prompt"] + response, ["prompt"] * len(data["prompt"]) + ["response"] * len(
            response
        )
    return data["text"], ["text"] * len(data["text"])


def _message_spans(text: str, messages: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """Where each non-assistant message's content is in ``text`` (assistant turns come from the
    layout)."""
    spans = []
    cursor = 0
    for message in messages:
        role = message["role"]
        content = reasoning_of(message)[1] if role == "assistant" else message["content"].strip()
        start = text.find(content, 0 if role == "system" else cursor) if content else -1
        if start < 0:
            continue
        if role != "assistant":
            spans.append((start, start + len(content), role))
        if role != "system":
            cursor = start + len(content)
    return spans


def _token_views(
    tokenizer: Any, text: str, roles: list[str], ids: list[int], trained: list[bool], task_type: str
) -> list[TokenView]:
    """Pair ``render``'s ids with the text each covers, from the offsets of the same tokenization.
    Tokens without text (an appended EOS, a BOS the tokenizer adds) are shown decoded."""
    encoded = tokenizer(
        text, add_special_tokens=task_type == INSTRUCTION, return_offsets_mapping=True
    )
    offsets: list[tuple[int, int]] = list(encoded["offset_mapping"])
    if list(encoded["input_ids"])[: len(ids)] != ids[: len(offsets)]:
        offsets = []  # not the tokenization render made; show decoded tokens instead
    views: list[TokenView] = []
    seen = 0
    for i, (token_id, is_trained) in enumerate(zip(ids, trained, strict=True)):
        start, end = offsets[i] if i < len(offsets) else (0, 0)
        if start >= end:
            # An appended EOS belongs to the trained text before it; a BOS to the template.
            role = views[-1].role if is_trained and views and views[-1].trained else TEMPLATE
            views.append(TokenView(tokenizer.decode([token_id]), token_id, is_trained, role))
            continue
        shown = text[max(start, seen) : end]
        seen = max(seen, end)
        covered = [r for r in roles[start:end] if r != TEMPLATE]
        role = "assistant" if is_trained and "assistant" in covered else (covered or [TEMPLATE])[0]
        views.append(TokenView(shown, token_id, is_trained, role))
    return views
