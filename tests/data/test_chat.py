"""Chat formats: lmpo's own, and a model's chat template rendered piece by piece, token in, token out."""

import pytest

from lmpo.data import LmpoFormat, TemplateFormat, Turn, chat_format, encode_dialogue, encode_prompt, train_tokenizer
from tests.conftest import gpt2_style_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DIALOGUE = [Turn("user", "Hello there"), Turn("assistant", "Hi, how can I help?"), Turn("user", "Book a taxi"),
            Turn("assistant", "Done: it comes at noon.")]


def chatml_tokenizer():
    """A tokenizer with a ChatML template of its own: eos is <|im_end|>, and it has a pad token."""
    tok = gpt2_style_tokenizer([t.content for t in DIALOGUE] * 20 + ["user assistant system tool"] * 20)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "pad_token": "<pad>"})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


def test_lmpo_format_is_lmpo_s_chat_format() -> None:
    tok = train_tokenizer([t.content for t in DIALOGUE] * 5, vocab_size=300)
    fmt = chat_format(tok)
    assert isinstance(fmt, LmpoFormat) and fmt.eos_ids == (tok.eos_token_id,)
    assert fmt.dialogue(DIALOGUE) == encode_dialogue(tok, DIALOGUE)
    assert fmt.opening(DIALOGUE[:1]) == encode_prompt(tok, DIALOGUE[:1])
    assert fmt.opening(DIALOGUE[:3]) == encode_prompt(tok, DIALOGUE[:3])
    reply = tok.encode(DIALOGUE[1].content, add_special_tokens=False)
    # a reply that ended with <eos> goes on with the next turn; one cut at the length limit gets its <eos> first
    whole = encode_prompt(tok, DIALOGUE[:3])
    assert fmt.opening(DIALOGUE[:1]) + [*reply, fmt.eos_ids[0]] + fmt.continuation(
        DIALOGUE[:1], [*reply, fmt.eos_ids[0]], DIALOGUE[2:3]) == whole
    assert fmt.opening(DIALOGUE[:1]) + reply + fmt.continuation(DIALOGUE[:1], reply, DIALOGUE[2:3]) == whole


def test_a_template_s_ids_and_loss_mask() -> None:
    tok = chatml_tokenizer()
    fmt = chat_format(tok, eos_ids=[tok.convert_tokens_to_ids("<|endoftext|>")])
    assert isinstance(fmt, TemplateFormat)
    assert fmt.eos_ids == (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"))
    enc = fmt.dialogue(DIALOGUE)
    assert enc.ids == tok.apply_chat_template([{"role": t.role, "content": t.content} for t in DIALOGUE],
                                              tokenize=True, return_dict=False)
    trained = tok.decode([i for i, m in zip(enc.ids, enc.loss_mask) if m])
    assert trained == "Hi, how can I help?<|im_end|>\nDone: it comes at noon.<|im_end|>\n"
    assert fmt.opening(DIALOGUE[:1]) == tok.encode("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("ended", [True, False])
def test_a_template_s_continuation_keeps_the_generated_ids(ended: bool) -> None:
    tok = chatml_tokenizer()
    fmt = chat_format(tok)
    reply = tok.encode(DIALOGUE[1].content, add_special_tokens=False) + ([tok.eos_token_id] if ended else [])
    ids = fmt.opening(DIALOGUE[:1]) + reply + fmt.continuation(DIALOGUE[:1], reply, DIALOGUE[2:3])
    # the generated ids stay; the closing is completed (or written whole, for a reply cut at the length limit)
    assert ids == tok.apply_chat_template([{"role": t.role, "content": t.content} for t in DIALOGUE[:3]],
                                          tokenize=True, add_generation_prompt=True, return_dict=False)


def test_a_template_that_rewrites_the_start_is_refused() -> None:
    tok = chatml_tokenizer()
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(ValueError, match="renders a conversation's start differently"):
        chat_format(tok).dialogue(DIALOGUE)
