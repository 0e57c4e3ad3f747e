"""How a conversation becomes token ids: lmpo's own chat format, or a Hugging Face model's chat template.

``chat_format(tokenizer)`` picks it from the tokenizer: one that carries lmpo's template (trained here, or a model's
tokenizer given lmpo's chat tokens because it had no template of its own) uses ``LmpoFormat``; one with a chat
template of its own uses ``TemplateFormat``, which renders with ``apply_chat_template`` and needs no token of
lmpo's. Both keep token in, token out: a reply's generated ids are never re-encoded; after a reply, only what closes
it and the turns the environment adds are encoded (``continuation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from lmpo.data.corpus import Turn
from lmpo.data.tokenizer import (
    ASSISTANT,
    CHAT_TEMPLATE,
    EOS,
    EncodedDialogue,
    encode_dialogue,
    encode_prompt,
    token_id,
)

PROBE = "\u2063lmpo-reply\u2063"  # an assistant message no one writes: where the template puts a reply's text


class ChatFormat(Protocol):
    """Token ids of conversations, for pre-training, generation and chat."""

    eos_ids: tuple[int, ...]  # ids that end a reply (the first is the tokenizer's eos)

    def dialogue(self, turns: Sequence[Turn]) -> EncodedDialogue:
        """A whole conversation, with a loss mask on the assistant's tokens (and what ends each of its turns)."""
        ...

    def opening(self, turns: Sequence[Turn]) -> list[int]:
        """The first turns of a conversation (or a person's whole chat so far, re-encoded every turn), then what
        starts the assistant's reply."""
        ...

    def continuation(self, history: Sequence[Turn], reply: Sequence[int], turns: Sequence[Turn]) -> list[int]:
        """What follows a reply's generated ids ``reply`` (``history`` is the conversation before it, ``turns`` what
        the environment adds after it): the reply's closing (when generation did not end it), the turns, and what
        starts the next reply."""
        ...


class LmpoFormat:
    """``<bos><|user|>text<eos><|assistant|>reply<eos>...``: see ``lmpo.data.tokenizer``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_ids: tuple[int, ...] = (token_id(tokenizer, EOS),)

    def dialogue(self, turns: Sequence[Turn]) -> EncodedDialogue:
        """See ``ChatFormat``."""
        return encode_dialogue(self.tokenizer, turns)

    def opening(self, turns: Sequence[Turn]) -> list[int]:
        """See ``ChatFormat``."""
        return encode_prompt(self.tokenizer, turns)

    def continuation(self, history: Sequence[Turn], reply: Sequence[int], turns: Sequence[Turn]) -> list[int]:
        """A reply cut at the length limit gets its ``<eos>``; each turn as in ``encode_dialogue``."""
        out = [] if reply and reply[-1] in self.eos_ids else [self.eos_ids[0]]
        if turns:
            out += encode_dialogue(self.tokenizer, turns).ids[1:] + [token_id(self.tokenizer, ASSISTANT)]
        return out


class TemplateFormat:
    """A model's own chat template. Ids are built from rendered text piece by piece: each piece is the text one
    template rendering adds to the one before (a template renders a conversation's start the same whatever
    follows, as every common template does; one that does not is refused)."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys([*ids, *map(int, eos_ids)]))
        if not self.eos_ids:
            raise ValueError("the tokenizer has no eos token and the model's generation config names none")
        # what the template writes after an assistant message's text (ChatML: "<|im_end|>\n")
        rendered = self._render([Turn("user", "x"), Turn("assistant", PROBE)])
        if PROBE not in rendered:
            raise ValueError("the chat template does not write the assistant's messages")
        self.closing = self._ids(rendered[rendered.index(PROBE) + len(PROBE):])

    def _render(self, turns: Sequence[Turn], generation_prompt: bool = False) -> str:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=generation_prompt))

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _piece(self, before: str, after: str) -> str:
        """The text ``after`` adds to ``before``."""
        if not after.startswith(before):
            raise ValueError("the chat template renders a conversation's start differently when more follows; lmpo "
                             "needs one that appends (as ChatML, Llama's and most others do)")
        return after[len(before):]

    def dialogue(self, turns: Sequence[Turn]) -> EncodedDialogue:
        """See ``ChatFormat``: each assistant message's text and closing are trained, the rest is context."""
        ids: list[int] = []
        mask: list[int] = []
        text = ""
        for i, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            start = self._render(turns[:i], generation_prompt=True)
            context = self._ids(self._piece(text, start))
            text = self._render(turns[:i + 1])
            reply = self._ids(self._piece(start, text))
            ids += context + reply
            mask += [0] * len(context) + [1] * len(reply)
        rest = self._ids(self._piece(text, self._render(turns))) if turns and turns[-1].role != "assistant" else []
        return EncodedDialogue(ids + rest, mask + [0] * len(rest))

    def opening(self, turns: Sequence[Turn]) -> list[int]:
        """See ``ChatFormat``."""
        return self._ids(self._render(turns, generation_prompt=True))

    def continuation(self, history: Sequence[Turn], reply: Sequence[int], turns: Sequence[Turn]) -> list[int]:
        """The template's closing of an assistant message (less the stop token generation already ended with),
        then the text rendering the new turns adds, with the next reply's start."""
        closing = self.closing
        if reply and reply[-1] in self.eos_ids and reply[-1] in closing:  # generation wrote the closing's stop token
            closing = closing[closing.index(reply[-1]) + 1:]
        if not turns:
            return closing
        before = [*history, Turn("assistant", PROBE)]
        added = self._piece(self._render(before), self._render([*before, *turns], generation_prompt=True))
        return closing + self._ids(added)


def uses_lmpo_format(tokenizer: Any) -> bool:
    """Whether the tokenizer carries lmpo's chat format (else its own template, or none)."""
    return getattr(tokenizer, "chat_template", None) in (None, CHAT_TEMPLATE)


def chat_format(tokenizer: Any, eos_ids: Sequence[int] = ()) -> LmpoFormat | TemplateFormat:
    """The format a tokenizer's conversations are written in: its own chat template if it has one, else lmpo's
    (``eos_ids``: more ids that end a reply, from a model's generation config)."""
    if uses_lmpo_format(tokenizer):
        return LmpoFormat(tokenizer)
    return TemplateFormat(tokenizer, eos_ids)
