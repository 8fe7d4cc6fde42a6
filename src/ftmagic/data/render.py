"""Turn one record into token ids plus the mask of tokens the loss is computed on.

Chat masks must be right for every Hugging Face chat template, including the many without
``{% generation %}`` markers and those that rewrite history (Qwen3 drops the reasoning of earlier
turns). So instead of parsing templates we render the conversation once as text and find each
assistant turn in it: it starts where the generation prompt of the messages before it stops
matching (after the assistant header), and it ends after the text the template closes every
assistant turn with, up to the token generation stops at (``<|eot_id|>``, or both of Command
R7B's ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``). The text is tokenized once with character
offsets, and a token is trained when it overlaps a trained turn. Headers, system, user and tool
tokens are never trained; nor are assistant turns with ``weight: 0``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ftmagic.errors import DataError

CHAT = "CHAT_COMPLETION"
INSTRUCTION = "INSTRUCTION_FINETUNE"
PRETRAIN = "CONTINUED_PRETRAIN"

Span = tuple[int, int]


@dataclass
class TokenizedExample:
    """Token ids of one example and, for each, whether the loss is computed on it."""

    input_ids: list[int]
    trained: list[bool]
    truncated: bool = False
    source: str | None = None
    line: int | None = None

    @property
    def num_trained(self) -> int:
        return sum(self.trained)

    def __len__(self) -> int:
        return len(self.input_ids)


def render(
    tokenizer: Any,
    data: dict[str, Any],
    task_type: str,
    *,
    max_length: int | None = None,
    source: str | None = None,
    line: int | None = None,
    options: ChatOptions | None = None,
) -> TokenizedExample:
    """Tokenize one record of ``task_type`` and mark the tokens the loss is computed on.

    Raises ``DataError`` (with source, line and field) when the record cannot be rendered or when
    nothing would be trained. With ``options.turns == "split"`` a chat record makes several
    examples: use ``render_examples``; here the record is rendered as its last turn.
    """
    if task_type == CHAT:
        ids, trained = render_chat(tokenizer, data, source=source, line=line, options=options)
    elif task_type == INSTRUCTION:
        ids, trained = render_instruction(tokenizer, data, source=source, line=line)
    elif task_type == PRETRAIN:
        ids, trained = render_text(tokenizer, data, source=source, line=line)
    else:
        raise DataError(
            f"unknown task_type {task_type!r}",
            source=source,
            line=line,
            fix="use CHAT_COMPLETION, INSTRUCTION_FINETUNE or CONTINUED_PRETRAIN",
        )
    example = TokenizedExample(ids, trained, False, source, line)
    if max_length is not None and len(ids) > max_length:
        example = TokenizedExample(ids[:max_length], trained[:max_length], True, source, line)
    if example.num_trained == 0:
        raise _nothing_trained(example, max_length, task_type, source, line)
    return example


def render_examples(
    tokenizer: Any,
    data: dict[str, Any],
    task_type: str,
    *,
    max_length: int | None = None,
    source: str | None = None,
    line: int | None = None,
    options: ChatOptions | None = None,
) -> list[TokenizedExample]:
    """The examples one record makes: one, or one per assistant turn with ``turns: split``."""
    split = task_type == CHAT and options is not None and options.turns == "split"
    records = split_turns(data) if split and isinstance(data, dict) else [data]
    return [
        render(
            tokenizer,
            r,
            task_type,
            max_length=max_length,
            source=source,
            line=line,
            options=options,
        )
        for r in records
    ]


def _nothing_trained(
    example: TokenizedExample,
    max_length: int | None,
    task_type: str,
    source: str | None,
    line: int | None,
) -> DataError:
    field = "messages" if task_type == CHAT else ("response" if task_type == INSTRUCTION else None)
    if example.truncated:
        return DataError(
            f"no trained token is left after truncating to {max_length} tokens",
            source=source,
            line=line,
            field=field,
            fix="raise context_length or shorten the text before the first trained part",
        )
    return DataError(
        "this example has no token to train on",
        source=source,
        line=line,
        field=field,
        fix="give it a non-empty assistant message or response",
    )


# --- chat ------------------------------------------------------------------------------------

TURN_MODES = ("all", "last", "split")
REASONING_FIELDS = ("reasoning_content", "thinking")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ChatOptions:
    """How chat records become examples.

    ``turns``: ``all`` trains every assistant turn as the template renders the whole conversation
    (the last turn keeps its reasoning); ``last`` trains only the last assistant turn; ``split``
    makes one example per assistant turn, each ending with that turn, so every turn's reasoning
    is trained. ``fold_system_prompt`` merges a system message into the first user message.
    """

    turns: str = "all"
    fold_system_prompt: bool = False

    @classmethod
    def of(cls, config: Any) -> ChatOptions:
        return cls(
            turns=str(getattr(config, "chat_turns", "all")),
            fold_system_prompt=bool(getattr(config, "fold_system_prompt", False)),
        )


@dataclass
class ChatLayout:
    """A rendered conversation: its text, the trained character spans, the span of every
    assistant turn (trained or not), what the template dropped or rewrote, and where the prompt
    seen at inference differs from the training text."""

    text: str
    spans: list[Span]
    turn_spans: dict[int, Span]
    notes: list[str] = field(default_factory=list)
    serving_diff: str | None = None


def render_chat(
    tokenizer: Any,
    data: dict[str, Any],
    *,
    source: str | None = None,
    line: int | None = None,
    options: ChatOptions | None = None,
) -> tuple[list[int], list[bool]]:
    """Token ids and trained flags of a ``{"messages": [...]}`` conversation."""
    options = options or ChatOptions()
    messages = _messages(data, source, line)
    layout = chat_layout(
        tokenizer,
        messages,
        tools=data.get("tools"),
        last_only=options.turns != "all",
        fold_system=options.fold_system_prompt,
        source=source,
        line=line,
    )
    return tokenize_with_spans(tokenizer, layout.text, layout.spans, add_special_tokens=False)


def split_turns(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per trained assistant turn, each ending with that turn (``turns: split``)."""
    messages = data.get("messages") or []
    records = []
    for i, message in enumerate(messages):
        assistant = isinstance(message, dict) and message.get("role") == "assistant"
        if assistant and message.get("weight", 1) != 0:
            records.append({**data, "messages": messages[: i + 1]})
    return records or [data]


def chat_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    source: str | None = None,
    line: int | None = None,
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character span of each trained assistant turn."""
    layout = chat_layout(tokenizer, messages, source=source, line=line)
    return layout.text, layout.spans


def chat_layout(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[Any] | None = None,
    last_only: bool = False,
    fold_system: bool = False,
    source: str | None = None,
    line: int | None = None,
) -> ChatLayout:
    """Render ``messages`` and find each assistant turn in the rendering.

    A turn starts where the generation prompt of the messages before it stops matching the
    rendering (after the assistant header) and ends after the text the template closes every
    assistant turn with (``<|eot_id|>``, ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``). Templates may
    rewrite history (Qwen3 drops the reasoning of earlier turns): what the rendering holds is what
    is trained. The last turn keeps its reasoning: when the template drops it even there (the
    DeepSeek-R1 distills), it is written after the generation prompt as the model generates it.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the model's tokenizer has no chat template",
            source=source,
            line=line,
            field="messages",
            fix="use an instruct/chat model, or task_type INSTRUCTION_FINETUNE with "
            "prompt/response records",
        )
    messages = prepare_messages(messages, fold_system=fold_system)
    _check_tool_support(tokenizer, messages, tools, source, line)
    render_ = _Renderer(tokenizer, tools, source, line)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    last = assistants[-1]
    notes: list[str] = []
    text, last_start = _text_with_last_turn(render_, messages, last, notes)
    anchors, starts = _content_positions(text, messages, source, line)
    closing = turn_closing(tokenizer)
    specials = _special_strings(tokenizer)
    stop = getattr(tokenizer, "eos_token", None)
    turn_spans: dict[int, Span] = {}
    serving_diff = None
    for i in assistants:
        prompt = render_(messages[:i], True)
        if i == last and last_start is not None:
            start = last_start
        else:
            start = _turn_start(prompt, text, anchors[i], messages[i])
        limit = starts[i + 1] if i + 1 < len(messages) else len(text)
        if limit is None:  # the next message's text is not in the rendering as it is
            limit = len(_common_prefix(render_(messages[: i + 1], False), text))
        end = _turn_end(text, (start, limit), messages[i], closing, (stop, specials))
        turn_spans[i] = (start, end)
        _check_tool_calls(tokenizer, messages[i], text[start:end], i, (source, line))
        if serving_diff is None and text[:start] != prompt:
            serving_diff = _serving_diff(i, text[:start], prompt)
        _note_rewrites(i, messages[i], text[start:end], notes)
    trained = [
        turn_spans[i]
        for i in assistants
        if messages[i].get("weight", 1) != 0 and (not last_only or i == last)
    ]
    return ChatLayout(text, trained, turn_spans, notes, serving_diff)


def prepare_messages(
    messages: list[dict[str, Any]], *, fold_system: bool = False
) -> list[dict[str, Any]]:
    """The messages as templates read them: a reasoning field under both names templates use
    (``reasoning_content`` for Qwen3, ``thinking`` for gpt-oss), and with ``fold_system`` the
    system message merged into the first user message."""
    out = []
    for message in messages:
        copy = dict(message)
        if copy.get("tool_calls"):
            # transformers drops None values, and most templates read content: a tool call's
            # null content is empty text; JSON-string arguments become the dict templates expect.
            copy["content"] = copy.get("content") or ""
            copy["tool_calls"] = [_parsed_arguments(c) for c in copy["tool_calls"]]
        reasoning = next(
            (copy[f] for f in REASONING_FIELDS if isinstance(copy.get(f), str) and copy[f]), None
        )
        if reasoning is not None:
            for name in REASONING_FIELDS:
                copy[name] = reasoning
        out.append(copy)
    if fold_system and out and out[0]["role"] == "system":
        system, rest = out[0], out[1:]
        for k, message in enumerate(rest):
            if message["role"] == "user":
                merged = f"{system.get('content') or ''}\n\n{message.get('content') or ''}"
                rest[k] = {**message, "content": merged}
                break
        out = rest
    return out


def _parsed_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    arguments = function["arguments"]
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return call
    return (
        {**call, "function": {**function, "arguments": parsed}}
        if isinstance(parsed, dict)
        else call
    )


def _string_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call arguments back as JSON strings, for templates that concatenate them."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            calls = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.dumps(c["function"]["arguments"]),
                    },
                }
                if isinstance(c.get("function", {}).get("arguments"), dict)
                else c
                for c in calls
            ]
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


def reasoning_of(message: dict[str, Any]) -> tuple[str, str]:
    """``(reasoning, answer)`` of an assistant message: the reasoning from a separate field or
    from a ``<think>…</think>`` block at the start of the content; the answer is the rest."""
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = ""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip(), content.strip()
    if THINK_CLOSE in content:
        head, _, answer = content.partition(THINK_CLOSE)
        return head.split(THINK_OPEN)[-1].strip(), answer.strip()
    return "", content.strip()


class _Renderer:
    """``apply_chat_template`` with the record's tools, as a ``DataError`` when it refuses."""

    def __init__(self, tokenizer: Any, tools: Any, source: str | None, line: int | None):
        self.tokenizer, self.tools, self.source, self.line = tokenizer, tools, source, line

    def __call__(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return _apply(
            self.tokenizer, messages, generation_prompt, self.source, self.line, tools=self.tools
        )


def _text_with_last_turn(
    render_: _Renderer, messages: list[dict[str, Any]], last: int, notes: list[str]
) -> tuple[str, int | None]:
    """The text to train on and, when known, where the last assistant turn starts in it."""
    full = render_(messages, False)
    prompt = render_(messages[:last], True)
    reasoning, answer = reasoning_of(messages[last])
    if full.startswith(prompt) and (not reasoning or reasoning in full[len(prompt) :]):
        return full, len(prompt)
    if not reasoning:
        return full, None
    written = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"
    inline = {k: v for k, v in messages[last].items() if k not in REASONING_FIELDS}
    rendered = render_([*messages[:last], {**inline, "content": written}], False)
    if rendered.startswith(prompt) and reasoning in rendered[len(prompt) :]:
        notes.append(
            f"messages[{last}]: the template does not read a reasoning field; the reasoning is "
            f"trained in the content as {THINK_OPEN}…{THINK_CLOSE}"
        )
        return rendered, len(prompt)
    closing = turn_closing(render_.tokenizer)
    overlap = _overlap(prompt, written)
    notes.append(
        f"messages[{last}]: the template drops the reasoning of the last assistant turn; it is "
        f"trained after the generation prompt, as the model writes it ({THINK_OPEN}…{THINK_CLOSE})"
    )
    return prompt + written[overlap:] + closing, len(prompt)


def _overlap(prompt: str, written: str) -> int:
    """Length of the longest end of ``prompt`` that ``written`` starts with (a generation prompt
    that opens the think block already)."""
    for n in range(min(len(prompt), len(written)), 0, -1):
        if prompt.endswith(written[:n]):
            return n
    return 0


def _turn_start(prompt: str, text: str, anchor: int, message: dict[str, Any]) -> int:
    """Where an assistant turn starts in ``text``: the end of its header, found as the part of
    the generation prompt ``text`` shares; by search when the template moves text around."""
    shared = len(_common_prefix(prompt, text))
    if shared >= anchor:
        return shared
    _, answer = reasoning_of(message)
    start = text.find(answer, anchor) if answer else anchor
    # Spaces the template puts right before the answer (Mistral's "[/INST] ") are generated by the
    # model, as the prefix method finds, since they are not part of any generation prompt.
    while start > anchor and text[start - 1] == " ":
        start -= 1
    return start


def _turn_end(
    text: str,
    bounds: tuple[int, int],
    message: dict[str, Any],
    closing: str,
    ends: tuple[str | None, list[str]],
) -> int:
    """Where an assistant turn ends: after the template's closing text that follows its answer
    (and tool calls), before the next message (``bounds[1]``). A turn closed otherwise (Command
    R's tool calls end with ``<|END_ACTION|>``) ends after its last stop token (the eos), else
    after the first special token after the answer."""
    start, limit = bounds
    stop, specials = ends
    _, answer = reasoning_of(message)
    at = text.find(answer, start, limit) if answer else -1
    after = at + len(answer) if at >= 0 else start
    if closing:
        found = text.find(closing, after, limit)
        if found >= 0:
            return found + len(closing)
    region = text[after:limit]
    if stop and stop in region:
        return after + region.rfind(stop) + len(stop)
    return after + _end_of_turn(region, 0, specials)


def _note_rewrites(i: int, message: dict[str, Any], turn: str, notes: list[str]) -> None:
    reasoning, _ = reasoning_of(message)
    if reasoning and reasoning not in turn:
        notes.append(
            f"messages[{i}]: the template drops this turn's reasoning; the answer is trained "
            "without it (train every turn's reasoning with chat_turns: split)"
        )
    if message.get("weight", 1) == 0:
        notes.append(f"messages[{i}]: weight 0, rendered but not trained")


def _serving_diff(i: int, training: str, serving: str) -> str:
    shared = len(_common_prefix(training, serving))
    context = max(0, shared - 30)
    return (
        f"before messages[{i}] the training text and the inference prompt differ after "
        f"{shared} characters: training has {training[context : shared + 40]!r}…, the prompt at "
        f"inference (add_generation_prompt=True) has {serving[context : shared + 40]!r}"
    )


_CLOSINGS: dict[tuple[int, str], str] = {}


def turn_closing(tokenizer: Any) -> str:
    """The text the template closes every assistant turn with, that is trained so the model
    learns to stop: what follows an answer both at the end of a conversation and before the next
    user turn, up to its last stop token (the tokenizer's eos), else its last special token.
    Command R7B gives ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``, Llama 3 ``<|eot_id|>``."""
    key = (id(tokenizer), str(getattr(tokenizer, "chat_template", "")))
    if key not in _CLOSINGS:
        _CLOSINGS[key] = _probe_closing(tokenizer)
    return _CLOSINGS[key]


def _probe_closing(tokenizer: Any) -> str:
    question, answer, follow_up = "Ftmagic probe question", "Ftmagic probe answer", "Ftmagic next"
    pair = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    try:
        final = str(tokenizer.apply_chat_template(pair, tokenize=False))
        middle = str(
            tokenizer.apply_chat_template(
                [*pair, {"role": "user", "content": follow_up}], tokenize=False
            )
        )
    except Exception:  # a template that needs more; turns then end at their first special token
        return ""
    tail_final = final[final.rfind(answer) + len(answer) :]
    after = middle[middle.rfind(answer) + len(answer) :]
    common = _common_prefix(tail_final, after[: max(0, after.find(follow_up))])
    stops = [s for s in (getattr(tokenizer, "eos_token", None),) if s and s in common]
    if stops:
        return common[: max(common.rfind(s) + len(s) for s in stops)]
    ends = [common.rfind(s) + len(s) for s in _special_strings(tokenizer) if s in common]
    return common[: max(ends)] if ends else common.rstrip() or common


def _check_tool_support(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: Any,
    source: str | None,
    line: int | None,
) -> None:
    uses = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if uses and "tool" not in str(tokenizer.chat_template):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise DataError(
            f"the chat template of {name} has no tool support: it cannot render tools, "
            "tool_calls or tool messages",
            source=source,
            line=line,
            field="tools" if tools else "messages",
            fix="use a model whose template renders tools (Qwen2.5, Qwen3, Llama 3.1+, "
            "Mistral v0.3, Granite 3, Command R7B), or leave the tool turns out of this record",
        )


def _check_tool_calls(
    tokenizer: Any, message: dict[str, Any], turn: str, i: int, where: tuple[str | None, int | None]
) -> None:
    for call in message.get("tool_calls") or []:
        name = (call.get("function") or {}).get("name")
        if name and name not in turn:
            model = getattr(tokenizer, "name_or_path", "") or "this model"
            raise DataError(
                f"the chat template of {model} does not render the assistant's tool call "
                f"{name!r}: it would not be trained",
                source=where[0],
                line=where[1],
                field=f"messages[{i}].tool_calls",
                fix="use a model whose template renders tool calls (Qwen2.5, Qwen3, Llama 3.1+, "
                "Mistral v0.3, Command R7B), or leave the tool turns out of this record",
            )


def template_reads_name(tokenizer: Any) -> bool:
    """Whether the chat template renders a message's ``name``."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    return any(s in template for s in ("message.name", "message['name']", 'message["name"]'))


def _messages(data: Any, source: str | None, line: int | None) -> list[dict[str, Any]]:
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(
            "a chat record needs a non-empty 'messages' list",
            source=source,
            line=line,
            field="messages",
            fix='write each line as {"messages": [{"role": "user", "content": "..."}, ...]}',
        )
    for i, message in enumerate(messages):
        ok = isinstance(message, dict) and isinstance(message.get("role"), str)
        content = message.get("content") if ok else None
        tool_call = ok and message.get("role") == "assistant" and bool(message.get("tool_calls"))
        if not ok or not (isinstance(content, str) or (content is None and tool_call)):
            raise DataError(
                "each message needs a string 'role' and a string 'content'",
                source=source,
                line=line,
                field=f"messages[{i}]",
                value=message,
                fix='use {"role": "user"|"assistant"|"system", "content": "..."}',
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            "a chat record needs at least one assistant message",
            source=source,
            line=line,
            field="messages",
            fix="end the conversation with the assistant's answer",
        )
    return messages


def _apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    source: str | None,
    line: int | None,
    *,
    tools: Any = None,
) -> str:
    from jinja2 import TemplateError

    def apply(messages: list[dict[str, Any]]) -> Any:
        return tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )

    try:
        try:
            text = apply(messages)
        except TypeError:  # a template that joins tool-call arguments as text (DeepSeek-R1)
            text = apply(_string_arguments(messages))
    except (TemplateError, TypeError) as err:
        raise _template_error(tokenizer, messages, err, source, line) from None
    return str(text)


def _template_error(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    err: Exception,
    source: str | None,
    line: int | None,
) -> DataError:
    if messages and messages[0]["role"] == "system" and "system" in str(err).lower():
        from ftmagic.data.templates import template_family

        family = template_family(tokenizer)
        return DataError(
            f"the {family} chat template rejects system messages: {err}",
            source=source,
            line=line,
            field="messages[0].role",
            fix="set fold_system_prompt: true to fold the system prompt into the first user "
            "message, or drop the system message",
        )
    return DataError(
        f"the model's chat template rejects this conversation: {err}",
        source=source,
        line=line,
        field="messages",
        fix="change the roles or order of the messages to what this model's template accepts",
    )


def _content_positions(
    full: str, messages: list[dict[str, Any]], source: str | None, line: int | None
) -> tuple[list[int], list[int | None]]:
    """Where the search for each message may start in ``full`` (the end of the previous turn's
    text), and where each message's text starts (None when not found as it is, or empty).
    User, tool and assistant turns keep their order; some templates move the system message.
    A user or assistant message whose text cannot be found was dropped: an error."""
    ends = []
    starts: list[int | None] = []
    cursor = 0
    for i, message in enumerate(messages):
        role = message["role"]
        content = reasoning_of(message)[1] if role == "assistant" else _text(message)
        start = cursor if role != "system" else 0
        pos = full.find(content, start) if content else start
        if pos < 0 and role == "tool":
            # Templates may re-encode a tool result (Llama 3.2 and Command R write it as JSON);
            # it is never trained, so only its place is lost.
            ends.append(cursor)
            starts.append(None)
            continue
        if pos < 0:
            raise DataError(
                f"the model's chat template drops this {role} message: its content is not in "
                "the rendered conversation",
                source=source,
                line=line,
                field=f"messages[{i}].content",
                value=message.get("content"),
                fix="fold it into another message (fold_system_prompt: true for a system "
                "message) or use a model whose template keeps it",
            )
        end = pos + len(content)
        if role != "system":
            cursor = end
        ends.append(end)
        starts.append(pos if content and role != "system" else None)
    previous = [0]
    for i in range(1, len(messages)):
        previous.append(ends[i - 1] if messages[i - 1]["role"] != "system" else previous[-1])
    return previous, starts


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content.strip() if isinstance(content, str) else ""


def _special_strings(tokenizer: Any) -> list[str]:
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        strings.add(str(getattr(token, "content", token)))
    return sorted((s for s in strings if s), key=len, reverse=True)


def _end_of_turn(turn: str, content_end: int, specials: list[str]) -> int:
    """End of the trained text in ``turn``: just after the first special token following the
    content (the end-of-turn token generation stops at); the whole turn when there is none."""
    best = None
    for special in specials:
        pos = turn.find(special, content_end)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, pos + len(special))
    return best[1] if best else len(turn)


def _common_prefix(a: str, b: str) -> str:
    if b.startswith(a):
        return a
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return a[:n]


def tokenize_with_spans(
    tokenizer: Any, text: str, spans: list[Span], *, add_special_tokens: bool
) -> tuple[list[int], list[bool]]:
    """Tokenize ``text`` once and flag each token that overlaps one of the character ``spans``."""
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    trained = [
        any(start < span_end and span_start < end for span_start, span_end in spans)
        for start, end in encoded["offset_mapping"]
    ]
    return ids, trained


# --- instruction and plain text --------------------------------------------------------------


def render_instruction(
    tokenizer: Any, data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> tuple[list[int], list[bool]]:
    """``prompt`` + ``response`` with no template; the response and EOS are trained."""
    prompt = data.get("prompt") if isinstance(data, dict) else None
    key = "response" if isinstance(data, dict) and "response" in data else "completion"
    response = data.get(key) if isinstance(data, dict) else None
    for name, value in (("prompt", prompt), (key, response)):
        if not isinstance(value, str):
            raise DataError(
                f"an instruction record needs a string '{name}'",
                source=source,
                line=line,
                field=name,
                value=value,
                fix='write each line as {"prompt": "...", "response": "..."}',
            )
    assert isinstance(prompt, str) and isinstance(response, str)
    text = prompt + response
    ids, trained = tokenize_with_spans(
        tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True
    )
    return _with_eos(tokenizer, ids, trained)


def render_text(
    tokenizer: Any, data: dict[str, Any], *, source: str | None = None, line: int | None = None
) -> tuple[list[int], list[bool]]:
    """A ``{"text": ...}`` document for continued pretraining: every token trained, then EOS."""
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise DataError(
            "a pretraining record needs a string 'text'",
            source=source,
            line=line,
            field="text",
            value=text,
            fix="use a folder of .txt files or records with a 'text' field",
        )
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _with_eos(tokenizer, ids, [True] * len(ids))


def _with_eos(tokenizer: Any, ids: list[int], trained: list[bool]) -> tuple[list[int], list[bool]]:
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        return [*ids, eos], [*trained, True]
    if ids:
        trained = [*trained[:-1], True]
    return ids, trained


def chunk_texts(tokenizer: Any, texts: Iterable[str], length: int) -> Iterator[TokenizedExample]:
    """Continued pretraining: documents joined with EOS and cut into ``length``-token sequences,
    every token trained. The last, shorter sequence is kept when it has at least 2 tokens."""
    eos = tokenizer.eos_token_id
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= length:
            chunk, buffer = buffer[:length], buffer[length:]
            yield TokenizedExample(chunk, [True] * length)
    if len(buffer) >= 2:
        yield TokenizedExample(buffer, [True] * len(buffer))
