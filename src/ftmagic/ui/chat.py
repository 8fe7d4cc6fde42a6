"""``%ft chat``: a small chat box against a fine-tuned run (its final model or a checkpoint)."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ftmagic.errors import FtmagicError
from ftmagic.ui.errors import message_html

_BUBBLE = "<div style='margin:3px 0'><b style='color:{color}'>{who}</b>: {text}</div>"


class ChatBox(widgets.VBox):
    """Type a message and press Send (or call ``send(text)``); the model's answer is appended.

    For a chat run the whole conversation is sent, so the model sees the earlier turns; for other
    task types each message is a prompt of its own.
    """

    def __init__(
        self, run: Any, *, checkpoint: int | None = None, max_new_tokens: int = 64
    ) -> None:
        self.run = run
        self.checkpoint = checkpoint
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []
        where = f"checkpoint step {checkpoint}" if checkpoint is not None else "final model"
        self.title = widgets.HTML(f"<b>chat with {html.escape(str(run.name))}</b> ({where})")
        self.history = widgets.HTML()
        self.text = widgets.Text(placeholder="Say something…", layout={"width": "60%"})
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.clear_button = widgets.Button(description="Clear")
        self.send_button.on_click(lambda _button: self.send())
        self.clear_button.on_click(lambda _button: self.clear())
        self.error = widgets.HTML()
        row = widgets.HBox([self.text, self.send_button, self.clear_button])
        super().__init__([self.title, self.history, row, self.error])

    def send(self, text: str | None = None) -> str | None:
        """Send ``text`` (default: the text box), show and return the model's answer."""
        prompt = (self.text.value if text is None else text).strip()
        if not prompt:
            return None
        self.text.value = ""
        self.error.value = ""
        self.messages.append({"role": "user", "content": prompt})
        self._show()
        try:
            answer = self.run.generate(
                self._model_input(prompt),
                max_new_tokens=self.max_new_tokens,
                checkpoint=self.checkpoint,
            )
        except FtmagicError as err:
            self.messages.pop()
            self.error.value = message_html(str(err))
            self._show()
            return None
        self.messages.append({"role": "assistant", "content": answer})
        self._show()
        return answer

    def clear(self) -> None:
        self.messages = []
        self._show()

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
