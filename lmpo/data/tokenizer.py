"""A byte-level BPE tokenizer for dialogue, trained with Hugging Face ``tokenizers``, and lmpo's chat format.

The chat format (one documented layout used everywhere: pre-training, generation, the environments)::

    <bos><|user|>Hello there<eos><|assistant|>Hi! How are you?<eos><|user|>...

Every turn is its role token, its text, then ``<eos>``; a reply is generated after ``<|assistant|>`` and
ends at ``<eos>``. The same layout is stored as the tokenizer's Jinja ``chat_template``, so
``tokenizer.apply_chat_template(messages)`` produces these ids for text without control tokens in it (lmpo
encodes ``<eos>`` typed in a turn as characters, never as the control token). ``<bos>``, ``<eos>`` and
``<pad>`` stand for the tokenizer's own bos, eos and pad tokens: a pretrained model's tokenizer keeps
its own (GPT-2's ``<|endoftext|>``) and gains only what it lacks (``add_chat_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmpo.data.corpus import Dialogue, Turn

PAD, BOS, EOS, USER, ASSISTANT, TOOL = "<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|tool|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, TOOL]
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT, "tool": TOOL}

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}<|user|>{% elif m['role'] == 'tool' %}<|tool|>{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                    show_progress: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (any text encodes, nothing is unknown) with lmpo's special tokens;
    ``show_progress``: the ``tokenizers`` trainer's own progress bars."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    # digits one by one (as LLaMA's tokenizer): any number is spelt with ten well-trained tokens, so numbers never
    # seen in training (a new price, an order number) can still be read and copied
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[USER, ASSISTANT, TOOL])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def dialogue_texts(dialogues: Iterable[Dialogue]) -> Iterable[str]:
    """Every utterance, for tokenizer training."""
    for d in dialogues:
        for turn in d:
            yield turn.content


def add_pad_token(tok: PreTrainedTokenizerBase) -> None:
    """Give ``tok`` a ``<pad>`` of its own when it has no pad or its pad is its eos: a pad equal to eos would
    mask every reply's closing ``<eos>`` out of training, so the model would never learn to stop."""
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})


def add_chat_tokens(tok: PreTrainedTokenizerBase) -> list[str]:
    """Give any tokenizer what the chat format needs and return the tokens added (resize the model's
    embeddings to ``len(tok)`` after: existing rows are untouched).

    The role tokens; a pad token distinct from eos (``add_pad_token``); a bos and eos where it has none.
    """
    before = set(tok.get_vocab())
    add_pad_token(tok)
    special: dict[str, Any] = {}
    if tok.eos_token is None:
        special["eos_token"] = EOS
    if tok.bos_token is None:
        special["bos_token"] = BOS
    tok.add_special_tokens(special)
    tok.add_tokens([t for t in ROLE_TOKENS.values() if t not in before], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return [t for t in tok.get_vocab() if t not in before]


def prepare_model_tokenizer(tok: PreTrainedTokenizerBase) -> list[str]:
    """A pretrained model's tokenizer made ready for lmpo; returns the tokens added (resize the embeddings after).

    With a chat template of its own it is used as it is (``lmpo.data.chat.TemplateFormat``): it only needs a pad
    distinct from eos, its unk token when it has one, else a ``<pad>`` of its own. Without one it gets lmpo's chat
    format and tokens (``add_chat_tokens``)."""
    if getattr(tok, "chat_template", None) in (None, CHAT_TEMPLATE):
        return add_chat_tokens(tok)
    if tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id:
        return []
    if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
        tok.pad_token = tok.unk_token
        return []
    add_pad_token(tok)
    return [PAD]


def check_chat_tokenizer(tok: PreTrainedTokenizerBase, name: str = "tokenizer") -> None:
    """Raise ``ValueError`` unless ``tok`` has the user and assistant role tokens and distinct pad, bos and eos
    tokens (``<|tool|>`` is needed only where a tool answers: a tokenizer made before it existed still chats); one
    with a chat template of its own needs only a pad distinct from its eos."""
    if getattr(tok, "chat_template", None) not in (None, CHAT_TEMPLATE):
        if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
            raise ValueError(f"{name} needs a pad token distinct from its eos (lmpo.data.prepare_model_tokenizer)")
        return
    missing = [t for t in (USER, ASSISTANT) if t not in tok.get_vocab()]
    missing += [f"{k} token" for k in ("pad", "bos", "eos") if getattr(tok, f"{k}_token") is None]
    if missing:
        raise ValueError(f"{name} lacks the chat format's tokens {missing} (lmpo.data.add_chat_tokens adds them)")
    if tok.pad_token_id == tok.eos_token_id:
        raise ValueError(f"{name}'s pad token is its eos token: replies would lose their closing eos")


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` of a local directory (or hub id), checked for the chat format."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    check_chat_tokenizer(tok, f"tokenizer {name_or_path}")
    return tok


@dataclass
class EncodedDialogue:
    """Token ids of a whole dialogue and which of them the model is trained to produce."""

    ids: list[int]
    loss_mask: list[int]  # 1 on the assistant's tokens and the <eos> that ends each of its turns


def _content_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A turn's text as data: ``<eos>`` or ``<|assistant|>`` typed in it are characters, never the control tokens
    (a person could otherwise end a turn or speak as the bot)."""
    return list(tok.encode(text, add_special_tokens=False, split_special_tokens=True))


def token_id(tok: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token (``<bos>``, ``<eos>`` and ``<pad>`` mean the tokenizer's own bos, eos and pad)."""
    token = {BOS: tok.bos_token, EOS: tok.eos_token, PAD: tok.pad_token}.get(token) or token
    i = tok.convert_tokens_to_ids(token)
    if not isinstance(i, int):
        raise ValueError(f"{token!r} is not a single token of this tokenizer")
    return i


def encode_dialogue(tok: PreTrainedTokenizerBase, dialogue: Sequence[Turn]) -> EncodedDialogue:
    """Ids in lmpo's chat format, with a loss mask on the bot's side of the conversation."""
    ids, mask = [token_id(tok, BOS)], [0]
    eos = token_id(tok, EOS)
    for turn in dialogue:
        body = _content_ids(tok, turn.content) + [eos]
        ids += [token_id(tok, ROLE_TOKENS[turn.role]), *body]
        trained = 1 if turn.role == "assistant" else 0
        mask += [0] + [trained] * len(body)
    return EncodedDialogue(ids, mask)


def encode_prompt(tok: PreTrainedTokenizerBase, history: Sequence[Turn], max_tokens: int | None = None) -> list[int]:
    """The ids a reply is generated from: the history in chat format, then ``<|assistant|>``; only the last
    ``max_tokens`` when given (the most recent context)."""
    ids = encode_dialogue(tok, history).ids + [token_id(tok, ASSISTANT)]
    return ids if max_tokens is None else ids[-max_tokens:]


def decode_reply(tok: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """A reply's text: special tokens (the closing ``<eos>``) dropped, surrounding space stripped."""
    return str(tok.decode(list(ids), skip_special_tokens=True)).strip()
