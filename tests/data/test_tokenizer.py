"""Tokenizer: trained here, saved, loaded back with AutoTokenizer; round trip; the chat format."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmpo.data import (
    SPECIAL_TOKENS,
    Turn,
    add_chat_tokens,
    check_chat_tokenizer,
    dialogue_texts,
    encode_dialogue,
    encode_prompt,
    load_chatterbot,
    load_tokenizer,
    train_tokenizer,
)
from tests.conftest import gpt2_style_tokenizer


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


def test_a_pretrained_tokenizer_gains_only_the_chat_tokens_it_lacks(tmp_path: Path) -> None:
    tok = gpt2_style_tokenizer(dialogue_texts(load_chatterbot(["greetings"])))
    n = len(tok)
    with pytest.raises(ValueError, match="lacks"):
        check_chat_tokenizer(tok)
    added = add_chat_tokens(tok)
    assert sorted(added) == ["<pad>", "<|assistant|>", "<|tool|>", "<|user|>"] and len(tok) == n + 4
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    check_chat_tokenizer(tok)
    dialogue = [Turn("user", "Hi"), Turn("assistant", "Hello")]
    ids = encode_dialogue(tok, dialogue).ids  # the format uses the tokenizer's own bos and eos
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    templated = tok.apply_chat_template([{"role": t.role, "content": t.content} for t in dialogue])
    assert list(templated["input_ids"] if hasattr(templated, "keys") else templated) == ids
    assert add_chat_tokens(tok) == []  # idempotent
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).pad_token == "<pad>"


def test_a_pad_equal_to_eos_is_refused() -> None:
    tok = gpt2_style_tokenizer(dialogue_texts(load_chatterbot(["greetings"])))
    add_chat_tokens(tok)
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="pad token is its eos"):
        check_chat_tokenizer(tok)
