"""The simulated user: token F1 by hand, thresholds, acceptable replies gathered across the corpus."""

import doctest

import pytest

import lmpo.rewards.satisfaction as sat
from lmpo.data import Turn, load_chatterbot
from lmpo.rewards import SimulatedUser, Verdict, token_f1


def test_doctests() -> None:
    assert doctest.testmod(sat).failed == 0


def test_token_f1_by_hand() -> None:
    # candidate {hello, there, friend}, reference {hello, friend}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("Hello there, friend!", "hello friend") == pytest.approx(0.8)
    assert token_f1("Café", "cafe") == 1.0
    assert token_f1("yes yes", "yes") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_judgement_and_acceptable_replies() -> None:
    d1 = (Turn("user", "What is AI?"), Turn("assistant", "Artificial intelligence is a field of science."))
    d2 = (Turn("user", "what is ai"), Turn("assistant", "A branch of engineering."))
    user = SimulatedUser([d1, d2], satisfied_at=0.6, neutral_at=0.3)
    assert len(user.acceptable["what is ai"]) == 2
    assert user.judge("What is AI?", "A branch of engineering") is Verdict.SATISFIED
    assert user.judge("What is AI?", "It is a field") is Verdict.NEUTRAL  # F1 0.4 against d1's reply
    assert user.judge("What is AI?", "Bananas.") is Verdict.UNSATISFIED
    assert user.judge("Never seen line", "anything") is Verdict.UNSATISFIED
    assert user(["What is AI?", "What is AI?"], ["A branch of engineering.", "no"]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        SimulatedUser([], satisfied_at=0.2, neutral_at=0.5)


def test_corpus_replies_satisfy_their_user() -> None:
    dialogues = load_chatterbot()
    user = SimulatedUser(dialogues)
    for d in dialogues[:300]:
        assert user.judge(d[0].content, d[1].content) is Verdict.SATISFIED
