"""Supervised pre-training lowers perplexity on the bot's tokens, and only those tokens count."""

import math

import pytest
import torch

from lmpo.data import dialogue_texts, encode_dialogue, load_chatterbot, split_dialogues, train_tokenizer
from lmpo.data.tokenizer import EncodedDialogue
from lmpo.policies import LMPolicy, RecurrentLM
from lmpo.policies.gpt import GPT, GPTConfig
from lmpo.train.pretrain import PretrainConfig, perplexity, pretrain, training_windows


def test_pretraining_fits_the_bot_side() -> None:
    dialogues = load_chatterbot(["greetings", "ai", "botprofile"])
    train, held = split_dialogues(dialogues, 0.2)
    tok = train_tokenizer(dialogue_texts(train), vocab_size=512)
    enc_train = [encode_dialogue(tok, d) for d in train]
    enc_held = [encode_dialogue(tok, d) for d in held]
    torch.manual_seed(0)
    pol = LMPolicy(RecurrentLM(len(tok), "gru", embed=64, hidden=128), tok.pad_token_id, tok.eos_token_id)
    before_train, before_held = perplexity(pol, enc_train), perplexity(pol, enc_held)
    assert before_train > 200  # a random model is close to uniform over 512 tokens
    m = pretrain(pol, enc_train, enc_held, PretrainConfig(epochs=20, lr=1e-2, batch_size=16), progress=False)
    assert m["pretrain/train_ppl"] < before_train / 20
    assert m["pretrain/heldout_ppl"] < before_held / 4
    assert math.isfinite(m["pretrain/loss"])


def test_perplexity_ignores_user_tokens() -> None:
    torch.manual_seed(0)
    pol = LMPolicy(RecurrentLM(20, "gru", embed=8, hidden=8), 0, 2)
    a = EncodedDialogue([1, 3, 5, 6, 2, 4, 7, 2], [0, 0, 0, 0, 0, 0, 1, 1])
    b = EncodedDialogue([1, 3, 9, 9, 2, 4, 7, 2], [0, 0, 0, 0, 0, 0, 1, 1])  # other user words, same reply
    c = EncodedDialogue([1, 3, 5, 6, 2, 4, 7, 2], [0, 0, 0, 0, 0, 0, 0, 0])
    assert perplexity(pol, [a]) != perplexity(pol, [b])  # the reply is conditioned on the user's words
    assert perplexity(pol, [c]) == 1.0  # nothing to predict: exp(0 / max(0, 1))


@pytest.mark.parametrize("kind", ["gru", "transformer"])
def test_loss_is_the_full_sequence_loss_at_trained_tokens(kind: str) -> None:
    # pre-training projects only the positions that predict a trained token: the same loss as full logits
    torch.manual_seed(0)
    body = RecurrentLM(30, "gru", embed=8, hidden=8) if kind == "gru" else GPT(GPTConfig(30, 1, 2, 8, 32, 0.0))
    pol = LMPolicy(body, 0, 2).eval()
    data = [EncodedDialogue([1, 3, 5, 6, 2, 4, 7, 2], [0, 0, 0, 0, 1, 0, 1, 1]),
            EncodedDialogue([1, 8, 9, 2, 11, 2], [0, 0, 0, 0, 1, 1])]  # padded to 8 in one batch
    total, count = 0.0, 0
    for d in data:
        ids = torch.tensor([d.ids])
        with torch.no_grad():
            logp = torch.log_softmax(body(ids, torch.ones_like(ids, dtype=torch.bool))[0][0], -1)
        for t in range(1, len(d.ids)):
            if d.loss_mask[t]:
                total, count = total - float(logp[t - 1, d.ids[t]]), count + 1
    assert perplexity(pol, data) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_long_dialogues_train_every_reply_from_its_start() -> None:
    # user 4 tokens, bot 10 (with its eos), user 3, bot 3: 21 tokens with <bos>
    ids = [1, *range(10, 14), *range(20, 30), *range(40, 43), *range(50, 53)]
    mask = [0] * 5 + [1] * 10 + [0] * 3 + [1] * 3
    d = EncodedDialogue(ids, mask)
    assert training_windows(d, 21) == [d]  # it fits: one example
    first, second = training_windows(d, 12)
    # the first reply keeps the line it answers (12 // 4 = 3 tokens of context, at least), its tail is cut
    assert first.ids == [11, 12, 13, *range(20, 29)] and first.loss_mask == [0] * 3 + [1] * 9
    # the second reply: as much of the conversation before it as fits, and only it is trained
    assert second.ids == [*range(24, 30), 40, 41, 42, 50, 51, 52] and second.loss_mask == [0] * 9 + [1] * 3
    # every trained token of the dialogue is trained exactly once, except the cut tail
    trained = [t for w in training_windows(d, 12) for t, m in zip(w.ids, w.loss_mask) if m]
    assert trained == [*range(20, 29), 50, 51, 52]
