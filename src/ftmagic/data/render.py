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

What a record must hold to be rendered is ``rules.require_*``. An example's text and trained
character spans form a ``Plan``; ``TokenCounter`` tokenizes plans in batches and marks their
trained tokens with the same ``plan_tokens``.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ftmagic.config import TaskType
from ftmagic.data.rules import (
    CHAT,
    INSTRUCTION,
    PRETRAIN,
    REASONING_FIELDS,
    THINK_CLOSE,
    THINK_OPEN,
    has_tool_calls,
    is_trained,
    reasoning_of,
    require_instruction,
    require_messages,
    require_text,
)
from ftmagic.errors import DataError

Span = tuple[int, int]
TASK_TYPES = [str(t) for t in TaskType]


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


class Plan(NamedTuple):
    """One example before tokenization: its text, the character spans whose tokens are trained
    (None: every token), whether the tokenizer adds its special tokens, and whether an EOS ends
    it. ``render`` tokenizes one plan; ``TokenCounter`` tokenizes a batch of them."""

    text: str
    spans: list[Span] | None
    special_tokens: bool = False
    eos: bool = False


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
    plan = plan_example(tokenizer, data, task_type, source=source, line=line, options=options)
    want = plan.spans is not None
    encoded = tokenizer(
        plan.text, add_special_tokens=plan.special_tokens, return_offsets_mapping=want
    )
    offsets = encoded["offset_mapping"] if want else None
    ids, trained = plan_tokens(tokenizer, plan, list(encoded["input_ids"]), offsets)
    return finish_example(ids, trained, task_type, max_length, source=source, line=line)


def plan_example(
    tokenizer: Any,
    data: dict[str, Any],
    task_type: str,
    *,
    source: str | None = None,
    line: int | None = None,
    options: ChatOptions | None = None,
) -> Plan:
    """What ``render`` tokenizes for one record, or the ``DataError`` it raises."""
    if task_type == CHAT:
        return chat_plan(tokenizer, data, source=source, line=line, options=options)
    if task_type == INSTRUCTION:
        prompt, response = require_instruction(data, source=source, line=line)
        text = prompt + response
        return Plan(text, [(len(prompt), len(text))], special_tokens=True, eos=True)
    if task_type == PRETRAIN:
        return Plan(require_text(data, source=source, line=line), None, eos=True)
    raise DataError(
        f"unknown task_type {task_type!r}",
        source=source,
        line=line,
        fix=f"use {', '.join(TASK_TYPES[:-1])} or {TASK_TYPES[-1]}",
    )


def plan_tokens(
    tokenizer: Any, plan: Plan, ids: list[int], offsets: list[Span] | None
) -> tuple[list[int], list[bool]]:
    """The ids and trained flags of a plan whose text tokenized to ``ids`` with character
    ``offsets``: a token is trained when it overlaps a trained span; then the EOS, if any."""
    trained = [True] * len(ids) if plan.spans is None else trained_flags(offsets or [], plan.spans)
    return _with_eos(tokenizer, ids, trained) if plan.eos else (ids, trained)


def trained_flags(offsets: list[Span], spans: list[Span]) -> list[bool]:
    """For each token's character offsets, whether it overlaps one of the ``spans``."""
    if len(spans) == 1:
        ((first, last),) = spans
        return [start < last and first < end for start, end in offsets]
    if not all(a[0] <= a[1] <= b[0] <= b[1] for a, b in itertools.pairwise(spans)):
        return [
            any(start < span_end and span_start < end for span_start, span_end in spans)
            for start, end in offsets
        ]
    # Spans in order and apart: only the first span ending after a token's start can overlap it.
    starts, ends, count = [s for s, _ in spans], [e for _, e in spans], len(spans)
    return [
        j < count and starts[j] < end
        for start, end in offsets
        for j in (bisect.bisect_right(ends, start),)
    ]


def finish_example(
    ids: list[int],
    trained: list[bool],
    task_type: str,
    max_length: int | None,
    *,
    source: str | None = None,
    line: int | None = None,
) -> TokenizedExample:
    """The example truncated to ``max_length``, or the error when no trained token is left."""
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
        for r in example_records(data, task_type, options)
    ]


def example_records(
    data: dict[str, Any], task_type: str, options: ChatOptions | None
) -> list[dict[str, Any]]:
    """The record itself, or with ``turns: split`` one record per trained assistant turn."""
    split = task_type == CHAT and options is not None and options.turns == "split"
    return split_turns(data) if split and isinstance(data, dict) else [data]


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


def chat_plan(
    tokenizer: Any,
    data: dict[str, Any],
    *,
    source: str | None = None,
    line: int | None = None,
    options: ChatOptions | None = None,
) -> Plan:
    """The rendered text and trained spans of a ``{"messages": [...]}`` conversation."""
    options = options or ChatOptions()
    messages = require_messages(data, source=source, line=line)
    layout = chat_layout(
        tokenizer,
        messages,
        tools=data.get("tools"),
        last_only=options.turns != "all",
        fold_system=options.fold_system_prompt,
        source=source,
        line=line,
    )
    return Plan(layout.text, layout.spans)


def split_turns(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per trained assistant turn, each ending with that turn (``turns: split``)."""
    messages = data.get("messages") or []
    records = []
    for i, message in enumerate(messages):
        assistant = isinstance(message, dict) and message.get("role") == "assistant"
        if assistant and is_trained(message):
            records.append({**data, "messages": messages[: i + 1]})
    return records or [data]


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
        raise no_chat_template(source=source, line=line)
    messages = prepare_messages(messages, fold_system=fold_system)
    _check_tool_support(tokenizer, messages, tools, source, line)
    render_ = _Renderer(tokenizer, messages, tools, source, line)
    # (reasoning, answer) of each assistant message, in order.
    parts = {i: reasoning_of(m) for i, m in enumerate(messages) if m["role"] == "assistant"}
    assistants = list(parts)
    last = assistants[-1]
    notes: list[str] = []
    text, last_start = _text_with_last_turn(render_, last, parts[last], notes)
    anchors, starts = _content_positions(text, messages, parts, source, line)
    facts = render_.facts
    turn_spans: dict[int, Span] = {}
    serving_diff = None
    for i in assistants:
        prompt = render_.prefix(i, True)
        if i == last and last_start is not None:
            start = last_start
        else:
            start = _turn_start(prompt, text, anchors[i], parts[i][1])
        limit = _turn_limit(render_, text, starts, i)
        ends = (facts.stop, facts.specials)
        end = _turn_end(text, (start, limit), parts[i][1], facts.closing, ends)
        turn_spans[i] = (start, end)
        if has_tool_calls(messages[i]):
            _check_tool_calls(tokenizer, messages[i], text[start:end], i, (source, line))
        if serving_diff is None and not (start == len(prompt) and text.startswith(prompt)):
            serving_diff = _serving_diff(i, text[:start], prompt)
        _note_rewrites(i, messages[i], parts[i][0], text, (start, end), notes)
    trained = [
        turn_spans[i]
        for i in assistants
        if is_trained(messages[i]) and (not last_only or i == last)
    ]
    return ChatLayout(text, trained, turn_spans, notes, serving_diff)


def no_chat_template(
    *, source: str | None = None, line: int | None = None, field: str = "messages"
) -> DataError:
    return DataError(
        "the model's tokenizer has no chat template",
        source=source,
        line=line,
        field=field,
        fix="use an instruct/chat model, or task_type INSTRUCTION_FINETUNE with prompt/response "
        "records",
    )


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
        if not copy.keys().isdisjoint(REASONING_FIELDS):
            _share_reasoning(copy)
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


def _share_reasoning(message: dict[str, Any]) -> None:
    reasoning = next(
        (message[f] for f in REASONING_FIELDS if isinstance(message.get(f), str) and message[f]),
        None,
    )
    if reasoning is not None:
        for name in REASONING_FIELDS:
            message[name] = reasoning


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


class _Renderer:
    """``apply_chat_template`` of a conversation's first messages (each prefix rendered once)
    or of other messages, with the record's tools, as a ``DataError`` when it refuses."""

    def __init__(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: Any,
        source: str | None,
        line: int | None,
    ):
        self.tokenizer, self.messages, self.tools = tokenizer, messages, tools
        self.source, self.line = source, line
        self.facts = _facts(tokenizer)
        self.direct = None if tools else self.facts.direct
        self.plain = self.direct is not None and _plain(messages)
        self.done: dict[tuple[int, bool], str] = {}

    def prefix(self, count: int, generation_prompt: bool) -> str:
        """The rendering of the first ``count`` messages."""
        key = (count, generation_prompt)
        if key not in self.done:
            self.done[key] = self(self.messages[:count], generation_prompt, self.plain)
        return self.done[key]

    def __call__(
        self, messages: list[dict[str, Any]], generation_prompt: bool, plain: bool | None = None
    ) -> str:
        if plain is None:
            plain = self.direct is not None and _plain(messages)
        # apply_chat_template refuses an empty conversation: only it gives that error.
        direct = self.direct if plain and messages else None
        return _apply(
            self.tokenizer,
            messages,
            generation_prompt,
            self.source,
            self.line,
            tools=self.tools,
            direct=direct,
        )


def _text_with_last_turn(
    render_: _Renderer, last: int, parts: tuple[str, str], notes: list[str]
) -> tuple[str, int | None]:
    """The text to train on and, when known, where the last assistant turn starts in it."""
    messages = render_.messages
    full = render_.prefix(len(messages), False)
    prompt = render_.prefix(last, True)
    reasoning, answer = parts
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


def _turn_start(prompt: str, text: str, anchor: int, answer: str) -> int:
    """Where an assistant turn starts in ``text``: the end of its header, found as the part of
    the generation prompt ``text`` shares; by search when the template moves text around."""
    shared = len(_common_prefix(prompt, text))
    if shared >= anchor:
        return shared
    start = text.find(answer, anchor) if answer else anchor
    # Spaces the template puts right before the answer (Mistral's "[/INST] ") are generated by the
    # model, as the prefix method finds, since they are not part of any generation prompt.
    while start > anchor and text[start - 1] == " ":
        start -= 1
    return start


def _turn_limit(render_: _Renderer, text: str, starts: list[int | None], i: int) -> int:
    """Where the text after assistant turn ``i`` starts: the next message's text, the end, or
    (when the next message's text is not in the rendering as it is) where the rendering up to the
    turn stops matching."""
    if i + 1 >= len(starts):
        return len(text)
    after = starts[i + 1]
    if after is not None:
        return after
    return len(_common_prefix(render_.prefix(i + 1, False), text))


def _turn_end(
    text: str,
    bounds: tuple[int, int],
    answer: str,
    closing: str,
    ends: tuple[str | None, list[str]],
) -> int:
    """Where an assistant turn ends: after the template's closing text that follows its answer
    (and tool calls), before the next message (``bounds[1]``). A turn closed otherwise (Command
    R's tool calls end with ``<|END_ACTION|>``) ends after its last stop token (the eos), else
    after the first special token after the answer."""
    start, limit = bounds
    stop, specials = ends
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


def _note_rewrites(
    i: int, message: dict[str, Any], reasoning: str, text: str, span: Span, notes: list[str]
) -> None:
    if reasoning and reasoning not in text[span[0] : span[1]]:
        notes.append(
            f"messages[{i}]: the template drops this turn's reasoning; the answer is trained "
            "without it (train every turn's reasoning with chat_turns: split)"
        )
    if not is_trained(message):
        notes.append(f"messages[{i}]: weight 0, rendered but not trained")


def _serving_diff(i: int, training: str, serving: str) -> str:
    shared = len(_common_prefix(training, serving))
    context = max(0, shared - 30)
    return (
        f"before messages[{i}] the training text and the inference prompt differ after "
        f"{shared} characters: training has {training[context : shared + 40]!r}…, the prompt at "
        f"inference (add_generation_prompt=True) has {serving[context : shared + 40]!r}"
    )


def turn_closing(tokenizer: Any) -> str:
    """The text the template closes every assistant turn with, that is trained so the model
    learns to stop: what follows an answer both at the end of a conversation and before the next
    user turn, up to its last stop token (the tokenizer's eos), else its last special token.
    Command R7B gives ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``, Llama 3 ``<|eot_id|>``."""
    return _facts(tokenizer).closing


@dataclass(frozen=True)
class _Facts:
    """What rendering reads from a tokenizer and its template, found once for both."""

    template: Any
    stop: str | None
    closing: str
    specials: list[str]
    direct: Callable[[list[dict[str, Any]], bool], str] | None


_FACTS: weakref.WeakKeyDictionary[Any, _Facts] = weakref.WeakKeyDictionary()


def _facts(tokenizer: Any) -> _Facts:
    template = getattr(tokenizer, "chat_template", None)
    stop = getattr(tokenizer, "eos_token", None)
    try:
        facts = _FACTS.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be a weak key: found again each time
        facts = None
    if facts is not None and facts.template == template and facts.stop == stop:
        return facts
    facts = _Facts(
        template,
        stop,
        _probe_closing(tokenizer),
        _special_strings(tokenizer),
        _direct_renderer(tokenizer),
    )
    with contextlib.suppress(TypeError):
        _FACTS[tokenizer] = facts
    return facts


def _direct_renderer(tokenizer: Any) -> Callable[[list[dict[str, Any]], bool], str] | None:
    """``apply_chat_template(tokenize=False)`` without its copying and normalising of every
    message, which costs more than rendering: transformers' own compiled template, rendered with
    the same variables, for messages that are plain JSON already (``_plain``). The variables and
    the template's globals are merged once rather than on every rendering. None when it does not
    give the public call's text on a probe, or without the helper."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)
        specials = tokenizer.special_tokens_map
        fixed = {**compiled.globals, **specials, "tools": None, "documents": None}
        concat, root = compiled.environment.concat, compiled.root_render_func
    except Exception:  # an older or newer transformers or jinja2: the public call
        return None

    def direct(messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        variables = {**fixed, "messages": messages, "add_generation_prompt": generation_prompt}
        return str(concat(root(compiled.new_context(variables, shared=True))))

    def public(messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        )

    probes = [(_PROBE[:1], True), (_PROBE[:2], False), (_PROBE, True)]
    try:
        same = all(direct(m, g) == public(m, g) for m, g in probes)
    except Exception:  # the template needs something only apply_chat_template provides
        same = False
    return direct if same else None


_PROBE = [
    {"role": "user", "content": "Ftmagic probe question"},
    {"role": "assistant", "content": "Ftmagic probe answer"},
    {"role": "user", "content": "Ftmagic probe follow-up"},
]
_ALIASED = ("reasoning_content", "thinking", "reasoning")


def _plain(messages: list[Any]) -> bool:
    """Messages that apply_chat_template would pass to the template unchanged: dicts of plain
    JSON values, with no None (it drops those keys) and no reasoning field (it adds aliases)."""
    for message in messages:
        if type(message) is not dict or not message.keys().isdisjoint(_ALIASED):
            return False
        if not _plain_json(message):
            return False
    return True


def _plain_json(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) is not str and not _plain_json(item)):
                return False
        return True
    if kind is list:
        return all(_plain_json(v) for v in value)
    return False


_SCALARS = (str, int, float, bool)


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
    uses = bool(tools) or any(m["role"] == "tool" or has_tool_calls(m) for m in messages)
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


def _apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    source: str | None,
    line: int | None,
    *,
    tools: Any = None,
    direct: Callable[[list[dict[str, Any]], bool], str] | None = None,
) -> str:
    def apply(messages: list[dict[str, Any]]) -> Any:
        if direct is not None:
            return direct(messages, generation_prompt)
        return tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )

    try:
        try:
            text = apply(messages)
        except TypeError:  # a template that joins tool-call arguments as text (DeepSeek-R1)
            text = apply(_string_arguments(messages))
    except Exception as err:
        from jinja2 import TemplateError

        if not isinstance(err, TemplateError | TypeError):
            raise
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
    full: str,
    messages: list[dict[str, Any]],
    parts: dict[int, tuple[str, str]],
    source: str | None,
    line: int | None,
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
        content = parts[i][1] if role == "assistant" else _text(message)
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


# --- EOS, continued pretraining ---------------------------------------------------------------


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
