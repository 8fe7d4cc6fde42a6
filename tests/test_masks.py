"""Loss masks for the chat templates of the main model families, checked span by span.

Each template string is the one published in that model's tokenizer_config.json (Mistral v0.3's
without its tool-calling branches, which plain chats never reach). They are set on a copy of the
tiny tokenizer with the family's special tokens added, so the test needs no download.
"""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from ftmagic.catalog import model_path
from ftmagic.data.render import TokenizedExample, chunk_texts, render
from ftmagic.errors import DataError
from ftmagic.tiny import LLAMA3_TEMPLATE

# meta-llama/Meta-Llama-3-8B-Instruct: the template the tiny chat model ships.
LLAMA3 = LLAMA3_TEMPLATE

# meta-llama/Llama-3.2-1B-Instruct (Llama 3.1 and 3.3 differ only in their tool lines): a system
# header with the knowledge cutoff and today's date is always rendered.
LLAMA32 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501

# mistralai/Mistral-7B-Instruct-v0.2 and Mixtral-8x7B-Instruct-v0.1: system folded into the
# first user turn.
MISTRAL_V2 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must \
alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception \
of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# mistralai/Mistral-7B-Instruct-v0.3: the system message goes into the LAST user turn, so a
# training conversation (which ends with the assistant) loses it.
MISTRAL_V3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception \
of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Qwen/Qwen2.5-0.5B-Instruct
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\
\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# google/gemma-2-2b-it
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# microsoft/Phi-3.5-mini-instruct: ends a finished conversation with eos_token.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {"template": LLAMA3, "bos": None, "eos": None, "extra": []},
    "llama32": {"template": LLAMA32, "bos": None, "eos": None, "extra": []},
    "mistral_v2": {"template": MISTRAL_V2, "bos": "<s>", "eos": "</s>", "extra": []},
    "mistral_v3": {"template": MISTRAL_V3, "bos": "<s>", "eos": "</s>", "extra": []},
    "qwen25": {
        "template": QWEN25,
        "bos": None,
        "eos": "<|im_end|>",
        "extra": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    },
    "gemma2": {
        "template": GEMMA2,
        "bos": "<bos>",
        "eos": "<eos>",
        "extra": ["<start_of_turn>", "<end_of_turn>"],
    },
    "phi3": {
        "template": PHI3,
        "bos": "<s>",
        "eos": "<|endoftext|>",
        "extra": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    },
}

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Say OK."},
    {"role": "assistant", "content": "OK"},
    {"role": "user", "content": "Now list two colours, one per line."},
    {"role": "assistant", "content": "Red\nBlue"},
]


def family_tokenizer(family: str) -> Any:
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(model_path("ftmagic/tiny-random-chat"))
    special: dict[str, Any] = {"extra_special_tokens": spec["extra"]}
    if spec["bos"]:
        special["bos_token"] = spec["bos"]
    if spec["eos"]:
        special["eos_token"] = spec["eos"]
    tokenizer.add_special_tokens(special)
    tokenizer.chat_template = spec["template"]
    return tokenizer


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, family_tokenizer(request.param)


def trained_runs(tokenizer: Any, example: TokenizedExample) -> list[str]:
    """The decoded text of each maximal run of trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, trained in zip(example.input_ids, example.trained, strict=True):
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run) for run in runs]


def chat(tokenizer: Any, messages: list[dict[str, str]], **kw: Any) -> TokenizedExample:
    return render(tokenizer, {"messages": messages}, "CHAT_COMPLETION", source="d.jsonl", **kw)


EXPECTED = {
    "llama3": ["OK<|eot_id|>", "Red\nBlue<|eot_id|>"],
    "llama32": ["OK<|eot_id|>", "Red\nBlue<|eot_id|>"],
    "mistral_v2": [" OK</s>", " Red\nBlue</s>"],
    "mistral_v3": [" OK</s>", " Red\nBlue</s>"],
    "qwen25": ["OK<|im_end|>", "Red\nBlue<|im_end|>"],
    "gemma2": ["OK<end_of_turn>", "Red\nBlue<end_of_turn>"],
    "phi3": ["OK<|end|>", "Red\nBlue<|end|>"],
}


def test_multi_turn_trains_exactly_the_assistant_turns(family: tuple[str, Any]) -> None:
    name, tokenizer = family
    example = chat(tokenizer, TURNS)
    assert trained_runs(tokenizer, example) == EXPECTED[name]
    # The whole conversation is there, tokenized once, without a second BOS.
    text = tokenizer.apply_chat_template(TURNS, tokenize=False)
    assert tokenizer.decode(example.input_ids) == text
    bos = tokenizer.bos_token_id
    assert example.input_ids.count(bos) == (1 if text.startswith(tokenizer.bos_token) else 0)
    assert not example.truncated and example.num_trained == sum(example.trained)


SYSTEM_EXPECTED = {
    "llama3": (["OK<|eot_id|>", "Red\nBlue<|eot_id|>"], "<|start_header_id|>system"),
    "llama32": (["OK<|eot_id|>", "Red\nBlue<|eot_id|>"], "Today Date: "),
    "mistral_v2": ([" OK</s>", " Red\nBlue</s>"], "[INST] You are terse.\n\nSay OK."),
    "qwen25": (["OK<|im_end|>", "Red\nBlue<|im_end|>"], "<|im_start|>system\nYou are terse."),
    "phi3": (["OK<|end|>", "Red\nBlue<|end|>"], "<|system|>\nYou are terse.<|end|>"),
}


@pytest.mark.parametrize("name", list(SYSTEM_EXPECTED))
def test_system_message_is_rendered_but_not_trained(name: str) -> None:
    tokenizer = family_tokenizer(name)
    example = chat(tokenizer, [SYSTEM, *TURNS])
    runs, system_text = SYSTEM_EXPECTED[name]
    assert trained_runs(tokenizer, example) == runs
    assert system_text in tokenizer.decode(example.input_ids)


def test_untrained_tokens_are_headers_system_and_user_llama3() -> None:
    tokenizer = family_tokenizer("llama3")
    example = chat(tokenizer, [SYSTEM, *TURNS])
    ignored = [t for t, keep in zip(example.input_ids, example.trained, strict=True) if not keep]
    assert tokenizer.decode(ignored) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSay OK.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "<|start_header_id|>user<|end_header_id|>\n\nNow list two colours, one per line.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_qwen_default_system_prompt_is_not_trained() -> None:
    tokenizer = family_tokenizer("qwen25")
    example = chat(tokenizer, TURNS[:2])
    assert trained_runs(tokenizer, example) == ["OK<|im_end|>"]
    assert "You are Qwen" in tokenizer.decode(example.input_ids)


def test_assistant_text_repeated_in_user_turn_is_not_trained_there() -> None:
    tokenizer = family_tokenizer("mistral_v2")
    messages = [
        {"role": "user", "content": "Reply with: Sure thing"},
        {"role": "assistant", "content": "Sure thing"},
    ]
    example = chat(tokenizer, messages)
    assert trained_runs(tokenizer, example) == [" Sure thing</s>"]


def test_llama3_trims_content_and_mask_follows() -> None:
    tokenizer = family_tokenizer("llama3")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello  \n"}]
    assert trained_runs(tokenizer, chat(tokenizer, messages)) == ["Hello<|eot_id|>"]


def test_template_that_drops_the_system_message_is_an_error() -> None:
    tokenizer = family_tokenizer("mistral_v3")
    with pytest.raises(DataError) as info:
        chat(tokenizer, [SYSTEM, *TURNS], line=7)
    err = info.value
    assert err.field == "messages[0].content" and err.line == 7 and err.source == "d.jsonl"
    assert "drops this system message" in str(err) and "Fix:" in str(err)


def test_template_exception_is_a_data_error() -> None:
    tokenizer = family_tokenizer("gemma2")
    with pytest.raises(DataError, match="System role not supported") as info:
        chat(tokenizer, [SYSTEM, *TURNS], line=3)
    # A template that rejects system messages is named by family, with the switch that fixes it.
    assert info.value.field == "messages[0].role" and info.value.line == 3
    assert "the Gemma chat template rejects system messages" in str(info.value)
    assert "fold_system_prompt: true" in str(info.value.fix)
    with pytest.raises(DataError, match="must alternate"):
        chat(tokenizer, [TURNS[0], TURNS[0], TURNS[1]])


def test_no_assistant_message_and_malformed_messages() -> None:
    tokenizer = family_tokenizer("llama3")
    with pytest.raises(DataError, match="at least one assistant message"):
        chat(tokenizer, TURNS[:1])
    with pytest.raises(DataError) as info:
        chat(tokenizer, [{"role": "user", "content": 5}, TURNS[1]])
    assert info.value.field == "messages[0]"
    with pytest.raises(DataError, match="non-empty 'messages'"):
        render(tokenizer, {"messages": []}, "CHAT_COMPLETION")


def test_tokenizer_without_chat_template_is_an_error() -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path("ftmagic/tiny-random-base"))
    with pytest.raises(DataError, match="no chat template"):
        chat(tokenizer, TURNS)


def test_truncation_keeps_what_fits_and_flags_it() -> None:
    tokenizer = family_tokenizer("llama3")
    full = chat(tokenizer, TURNS)
    cut = chat(tokenizer, TURNS, max_length=len(full) - 3)
    assert cut.truncated and len(cut) == len(full) - 3
    assert cut.input_ids == full.input_ids[: len(cut)]
    assert cut.trained == full.trained[: len(cut)]
    first_trained = full.trained.index(True)
    with pytest.raises(DataError, match="no trained token is left after truncating to 5"):
        chat(tokenizer, TURNS, max_length=5)
    assert first_trained > 5


def test_instruction_trains_response_and_eos() -> None:
    tokenizer = family_tokenizer("llama3")
    example = render(
        tokenizer, {"prompt": "Translate: chat\n", "response": "cat"}, "INSTRUCTION_FINETUNE"
    )
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert trained_runs(tokenizer, example) == ["cat<|eot_id|>"]
    completion = render(
        tokenizer, {"prompt": "Translate: chat\n", "completion": "cat"}, "INSTRUCTION_FINETUNE"
    )
    assert completion.input_ids == example.input_ids
    with pytest.raises(DataError) as info:
        render(tokenizer, {"prompt": "x"}, "INSTRUCTION_FINETUNE", line=2)
    assert info.value.field == "completion" and info.value.line == 2


def test_instruction_with_empty_response_trains_only_eos() -> None:
    tokenizer = family_tokenizer("qwen25")
    example = render(tokenizer, {"prompt": "Hello", "response": ""}, "INSTRUCTION_FINETUNE")
    assert trained_runs(tokenizer, example) == ["<|im_end|>"]


def test_chunk_texts_joins_documents_with_eos() -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_path("ftmagic/tiny-random-base"))
    docs = ["The cat sat on the mat. " * 20, "A second document.", "Third."]
    chunks = list(chunk_texts(tokenizer, docs, 32))
    joined = [t for c in chunks for t in c.input_ids]
    expected: list[int] = []
    for doc in docs:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"]
        expected.append(tokenizer.eos_token_id)
    assert joined == expected
    assert all(len(c) == 32 for c in chunks[:-1]) and 2 <= len(chunks[-1]) <= 32
    assert all(all(c.trained) for c in chunks)
    assert joined.count(tokenizer.eos_token_id) == 3


# mistral_common's V3 rule written as a template: the system prompt joins the last *user* turn,
# wherever the conversation ends. Prefixes of the conversation then render the system prompt in a
# different place than the whole does, which exercises the search-based span finder.
SYSTEM_IN_LAST_USER = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if message == user_messages[-1] and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- endif %}
{%- endfor %}
"""


def test_system_in_last_user_turn_masks_by_search() -> None:
    tokenizer = family_tokenizer("mistral_v3")
    tokenizer.chat_template = SYSTEM_IN_LAST_USER
    messages = [
        SYSTEM,
        *TURNS,
        {"role": "user", "content": "OK?"},
        {"role": "assistant", "content": "OK"},
    ]
    example = chat(tokenizer, messages)
    assert trained_runs(tokenizer, example) == [" OK</s>", " Red\nBlue</s>", " OK</s>"]
    text = tokenizer.decode(example.input_ids)
    assert "[INST] You are terse.\n\nOK?[/INST]" in text
