"""Tokenizer: trained here, saved, loaded back with AutoTokenizer; round trip; the chat format."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmpo.data import (
    SPECIAL_TOKENS,
    Turn,
    dialogue_texts,
    encode_dialogue,
    encode_prompt,
    load_chatterbot,
    load_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(dialogue_texts(load_chatterbot()), vocab_size=1024)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


def test_autotokenizer_loads_it(saved: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved)
    assert len(tok) == 1024
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert len(set(ids)) == len(SPECIAL_TOKENS) and all(i < len(SPECIAL_TOKENS) for i in ids)
    assert load_tokenizer(saved).get_vocab() == tok.get_vocab()


def test_round_trip_every_corpus_utterance_and_unicode(saved: Path) -> None:
    tok = load_tokenizer(saved)
    texts = [*dialogue_texts(load_chatterbot()), "héllo 👋 — ñ  two  spaces\ttab\nnew line", ""]
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # special-token text inside user content is split like any other text would be only if asked; the
    # role markers in the format always come from the ids themselves


def test_chat_template_equals_encode_dialogue(saved: Path) -> None:
    tok = load_tokenizer(saved)
    dialogue = (Turn("user", "Hello there"), Turn("assistant", "Hi! How are you?"), Turn("user", "Fine."),
                Turn("assistant", "Good to hear."))
    enc = encode_dialogue(tok, dialogue)
    msgs = [{"role": t.role, "content": t.content} for t in dialogue]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<bos><|user|>Hello there<eos><|assistant|>Hi! How are you?<eos><|user|>Fine.<eos>"
        "<|assistant|>Good to hear.<eos>")
    ids = tok.apply_chat_template(msgs, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == enc.ids
    prompt = tok.apply_chat_template(msgs[:1], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert list(prompt) == encode_prompt(tok, dialogue[:1])


def test_loss_mask_covers_exactly_the_bot(saved: Path) -> None:
    tok = load_tokenizer(saved)
    dialogue = (Turn("user", "What is AI?"), Turn("assistant", "A field of science."))
    enc = encode_dialogue(tok, dialogue)
    trained = [i for i, m in zip(enc.ids, enc.loss_mask) if m]
    assert tok.decode(trained) == "A field of science.<eos>"
    assert len(enc.ids) == len(enc.loss_mask)


def test_too_small_vocab() -> None:
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(["a b c"], vocab_size=100)


def test_prompt_window_and_reply_decoding(saved: Path) -> None:
    from lmpo.data import decode_reply

    tok = load_tokenizer(saved)
    history = [Turn("user", "Hello there, how are you doing today?")]
    full = encode_prompt(tok, history)
    assert encode_prompt(tok, history, 5) == full[-5:] and encode_prompt(tok, history, 10_000) == full
    reply = tok.encode(" Fine, thanks. ", add_special_tokens=False) + [tok.eos_token_id]
    assert decode_reply(tok, reply) == "Fine, thanks."
