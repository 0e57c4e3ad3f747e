"""Dialogue data: corpora, the train/held-out split, the tokenizer and the chat format."""

from lmpo.data.chat import ChatFormat, LmpoFormat, TemplateFormat, chat_format
from lmpo.data.corpus import (
    CorpusError,
    Dialogue,
    Turn,
    load_chatterbot,
    load_jsonl,
    split_dialogues,
)
from lmpo.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    EncodedDialogue,
    add_chat_tokens,
    check_chat_tokenizer,
    decode_reply,
    dialogue_texts,
    encode_dialogue,
    encode_prompt,
    load_tokenizer,
    prepare_model_tokenizer,
    train_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "ChatFormat",
    "CorpusError",
    "Dialogue",
    "EncodedDialogue",
    "LmpoFormat",
    "TemplateFormat",
    "Turn",
    "add_chat_tokens",
    "chat_format",
    "check_chat_tokenizer",
    "decode_reply",
    "dialogue_texts",
    "encode_dialogue",
    "encode_prompt",
    "load_chatterbot",
    "load_jsonl",
    "load_tokenizer",
    "prepare_model_tokenizer",
    "split_dialogues",
    "train_tokenizer",
]
