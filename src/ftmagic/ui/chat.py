"""``%ft chat``: a small chat box against a fine-tuned run (its final model or a checkpoint).

Enter or Send asks; while the model answers, Send is disabled and a spinner shows, and the answer
appears token by token (transformers' ``TextIteratorStreamer``), greedy like ``Run.generate``.
The picker switches between the final model and any committed checkpoint.
"""

from __future__ import annotations

import html
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import ipywidgets as widgets

from ftmagic.errors import FtmagicError, RunError
from ftmagic.ui.errors import message_html

_BUBBLE = "<div style='margin:3px 0'><b style='color:{color}'>{who}</b>: {text}</div>"
SPINNER = (
    "<span style='color:#555'><span style='display:inline-block;width:10px;height:10px;"
    "border:2px solid #bbb;border-top-color:#1565c0;border-radius:50%;"
    "animation:ftmagic-spin 0.8s linear infinite'></span> answering…</span>"
    "<style>@keyframes ftmagic-spin{to{transform:rotate(360deg)}}</style>"
)
FINAL = "final model"


class ChatBox(widgets.VBox):
    """Type a message and press Enter or Send (or call ``send(text)``); the model's answer is
    appended as it is generated.

    For a chat run the whole conversation is sent, so the model sees the earlier turns; for other
    task types each message is a prompt of its own. The system prompt is the training data's.
    """

    def __init__(
        self, run: Any, *, checkpoint: int | None = None, max_new_tokens: int = 64
    ) -> None:
        self.run = run
        self.checkpoint = checkpoint
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []
        self.title = widgets.HTML(f"<b>chat with {html.escape(str(run.name))}</b>")
        self.picker = widgets.Dropdown(
            options=checkpoint_options(run, checkpoint),
            value=checkpoint,
            description="model",
            layout={"width": "260px"},
        )
        self.picker.observe(self._pick, names="value")
        self.history = widgets.HTML()
        self.text = widgets.Text(
            placeholder="Say something… (Enter sends)", layout={"width": "60%"}
        )
        with (
            warnings.catch_warnings()
        ):  # Enter is 'submit'; observing value would also fire on blur
            warnings.simplefilter("ignore", DeprecationWarning)
            self.text.on_submit(lambda _text: self.send())
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.clear_button = widgets.Button(description="Clear")
        self.send_button.on_click(lambda _button: self.send())
        self.clear_button.on_click(lambda _button: self.clear())
        self.status = widgets.HTML()
        self.error = widgets.HTML()
        row = widgets.HBox([self.text, self.send_button, self.clear_button, self.status])
        super().__init__([widgets.HBox([self.title, self.picker]), self.history, row, self.error])
        self._busy_lock = threading.Lock()

    def send(self, text: str | None = None) -> str | None:
        """Send ``text`` (default: the text box), show the answer as it streams, return it.
        Ignored while an answer is still coming."""
        prompt = (self.text.value if text is None else text).strip()
        if not prompt or not self._busy_lock.acquire(blocking=False):
            return None
        try:
            self._busy(True)
            return self._answer(prompt)
        finally:
            self._busy(False)
            self._busy_lock.release()

    def clear(self) -> None:
        self.messages = []
        self._show()

    def stream(self, model_input: Any) -> Iterator[str]:
        """The answer to ``model_input`` in pieces, as the model generates them."""
        loaded = getattr(self.run, "_loaded_model", None)
        if loaded is None:  # a run object that only offers generate(): one piece
            yield self.run.generate(
                model_input, max_new_tokens=self.max_new_tokens, checkpoint=self.checkpoint
            )
            return
        model, tokenizer = loaded(self.checkpoint)
        yield from stream_generate(model, tokenizer, model_input, self.max_new_tokens)

    def _answer(self, prompt: str) -> str | None:
        self.text.value = ""
        self.error.value = ""
        self.messages.append({"role": "user", "content": prompt})
        model_input = self._model_input(prompt)
        answer = {"role": "assistant", "content": ""}
        self.messages.append(answer)
        self._show()
        try:
            for piece in self.stream(model_input):
                answer["content"] += piece
                self._show()
        except FtmagicError as err:
            del self.messages[-2:]
            self.error.value = message_html(str(err))
            self._show()
            return None
        return answer["content"]

    def _busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.picker.disabled = busy
        self.status.value = SPINNER if busy else ""

    def _pick(self, change: dict[str, Any]) -> None:
        self.checkpoint = change["new"]

    def _model_input(self, prompt: str) -> Any:
        # The same rule as the eval prompts: the training data's shared system prompt, or the
        # instruction template, so the model is asked the way it was trained.
        from ftmagic.data.formats import model_input

        return model_input(prompt, self.run.config, history=self.messages[:-1])

    def _show(self) -> None:
        self.history.value = "".join(
            _BUBBLE.format(
                color="#1565c0" if m["role"] == "user" else "#2e7d32",
                who="you" if m["role"] == "user" else "model",
                text=html.escape(m["content"]).replace("\n", "<br>"),
            )
            for m in self.messages
        )


def checkpoint_options(run: Any, chosen: int | None) -> list[tuple[str, int | None]]:
    """The final model, then every committed checkpoint, newest first."""
    try:
        steps = sorted({int(c.step) for c in run.checkpoints}, reverse=True)
    except Exception:  # a run that cannot list checkpoints still chats with its final model
        steps = []
    if chosen is not None and chosen not in steps:
        steps.insert(0, chosen)
    return [(FINAL, None), *[(f"checkpoint step {step}", step) for step in steps]]


def stream_generate(model: Any, tokenizer: Any, prompt: Any, max_new_tokens: int) -> Iterator[str]:
    """Greedy generation, as ``ftmagic.models.generation.generate``, yielded as it is decoded."""
    import torch
    from transformers import TextIteratorStreamer

    from ftmagic.models.generation import prompt_ids

    ids = prompt_ids(tokenizer, prompt)
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TextIteratorStreamer(
        tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
    )
    failed: list[BaseException] = []

    def work() -> None:
        model.eval()
        try:
            with torch.no_grad():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    streamer=streamer,
                )
        except Exception as err:  # reported in the chat box, not lost in the thread
            failed.append(err)
            streamer.end()

    thread = threading.Thread(target=work, name="ftmagic-chat", daemon=True)
    thread.start()
    yield from (piece for piece in streamer if piece)
    thread.join()
    if failed:
        raise RunError(f"the model could not answer: {type(failed[0]).__name__}: {failed[0]}")
