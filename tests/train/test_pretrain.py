"""Supervised pre-training lowers perplexity on the bot's tokens, and only those tokens count."""

import itertools
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import lmpo.train.pretrain as pretrain_module
from lmpo.config import ConfigError
from lmpo.data import dialogue_texts, encode_dialogue, load_chatterbot, split_dialogues, train_tokenizer
from lmpo.data.tokenizer import EncodedDialogue
from lmpo.policies import LMPolicy, RecurrentLM
from lmpo.policies.gpt import GPT, GPTConfig
from lmpo.train.pretrain import (
    METRICS_FILE,
    STATE_FILE,
    PretrainConfig,
    finished_metrics,
    perplexity,
    pretrain,
    training_windows,
)


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


# ------------------------------------------------------------------------------------ resuming
def _dialogues(n: int, seed: int) -> list[EncodedDialogue]:
    """Random dialogues of 4-15 tokens whose second half is the bot's."""
    g = np.random.default_rng(seed)
    out = []
    for length in g.integers(4, 16, n).tolist():
        ids = [1, *g.integers(3, 30, length - 1).tolist()]
        out.append(EncodedDialogue(ids, [0] * (length // 2) + [1] * (length - length // 2)))
    return out


TRAIN, HELD = _dialogues(40, 0), _dialogues(8, 1)
CFG = PretrainConfig(epochs=3, lr=1e-2, batch_size=8, max_len=16)  # 5 steps an epoch, 15 in all


def _run(kind: str, checkpoint_dir: Path | None = None, seed: int = 0, save_every_s: float = 0.0,
         cfg: PretrainConfig = CFG) -> tuple[LMPolicy, dict[str, float]]:
    """A fresh process's pre-training: seed, build the policy (dropout on, so the torch RNG matters), train."""
    torch.manual_seed(seed)
    body = (RecurrentLM(30, "gru", embed=16, hidden=16, dropout=0.3) if kind == "gru"
            else GPT(GPTConfig(30, 1, 2, 16, 32, 0.2)))
    pol = LMPolicy(body, 0, 2)
    return pol, pretrain(pol, TRAIN, HELD, cfg, progress=False, checkpoint_dir=checkpoint_dir,
                         save_every_s=save_every_s)


def _assert_same_weights(a: LMPolicy, b: LMPolicy) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _fail_after(calls: int, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` that raises ``Interrupted`` from its ``calls + 1``-th call on: a crash at that point."""
    count = itertools.count(1)

    def wrapped(*args: Any) -> Any:
        if next(count) > calls:
            raise Interrupted
        return fn(*args)
    return wrapped


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", ["gru", "transformer"])
@pytest.mark.parametrize(("crash_in", "after", "save_every_s", "resumed_at"), [
    ("step", 12, 0.0, 12),  # a state saved after every step, the crash in the third epoch's third step
    ("step", 10, 0.0, 10),  # the crash at the second epoch's end
    ("step", 11, 4.0, 8),  # saves after steps 4, 8, 12 (a fake clock): steps 9-11 are done again
    ("save", 9, 0.0, 9),  # the crash while the 10th state replaces the 9th: the 9th stays whole
])
def test_an_interrupted_pretraining_resumes_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                                       crash_in: str, after: int, save_every_s: float,
                                                       resumed_at: int) -> None:
    reference, expected = _run(kind)  # uninterrupted, and without saving: saving changes no number
    tick = itertools.count()
    monkeypatch.setattr(pretrain_module, "time", SimpleNamespace(monotonic=lambda: float(next(tick))))
    with monkeypatch.context() as m:
        if crash_in == "step":
            m.setattr(pretrain_module, "_nll", _fail_after(after, pretrain_module._nll))
        else:
            m.setattr(os, "replace", _fail_after(after, os.replace))
        with pytest.raises(Interrupted):
            _run(kind, tmp_path, save_every_s=save_every_s)
    assert finished_metrics(tmp_path) is None
    starts = []

    class Progress(pretrain_module.TrainingProgress):
        def __init__(self, total: int, done: int, **kw: Any) -> None:
            starts.append(done)
            super().__init__(total, done, **kw)
    monkeypatch.setattr(pretrain_module, "TrainingProgress", Progress)
    resumed, metrics = _run(kind, tmp_path, seed=1, save_every_s=save_every_s)  # another seed: all is restored
    assert starts == [resumed_at]
    _assert_same_weights(resumed, reference)
    assert metrics == expected
    assert finished_metrics(tmp_path) == expected


def test_a_finished_pretraining_is_loaded_not_repeated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained, expected = _run("gru", tmp_path)
    rng_after = torch.get_rng_state()
    assert finished_metrics(tmp_path) == expected
    monkeypatch.setattr(pretrain_module, "_nll", _fail_after(0, pretrain_module._nll))  # no forward pass at all
    loaded, metrics = _run("gru", tmp_path, seed=1)
    assert metrics == expected
    _assert_same_weights(loaded, trained)
    assert torch.equal(torch.get_rng_state(), rng_after)  # what follows draws the same numbers too


@pytest.mark.parametrize("name", [STATE_FILE, METRICS_FILE])
def test_a_damaged_state_is_an_error_naming_the_file(tmp_path: Path, name: str) -> None:
    _run("gru", tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="is damaged .*; delete it to restart pre-training") as e:
        _run("gru", tmp_path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_a_state_from_other_settings_is_not_continued(tmp_path: Path) -> None:
    _run("gru", tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        _run("gru", tmp_path, cfg=PretrainConfig(epochs=4, lr=1e-2, batch_size=8, max_len=16))
