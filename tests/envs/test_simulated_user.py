"""Chatbot-v0's simulated user: thresholds, acceptable replies gathered across the corpus."""

import pytest

from lmpo.data import Turn, load_chatterbot
from lmpo.envs.chatbot import SimulatedUser, Verdict


def test_judgement_and_acceptable_replies() -> None:
    d1 = (Turn("user", "What is AI?"), Turn("assistant", "Artificial intelligence is a field of science."))
    d2 = (Turn("user", "what is ai"), Turn("assistant", "A branch of engineering."))
    user = SimulatedUser([d1, d2], satisfied_at=0.6, neutral_at=0.3)
    assert len(user.acceptable["what is ai"]) == 2
    assert user.judge("What is AI?", "A branch of engineering") is Verdict.SATISFIED
    assert user.judge("What is AI?", "It is a field") is Verdict.NEUTRAL  # F1 0.4 against d1's reply
    assert user.judge("What is AI?", "Bananas.") is Verdict.UNSATISFIED
    assert user.judge("Never seen line", "anything") is Verdict.UNSATISFIED
    with pytest.raises(ValueError):
        SimulatedUser([], satisfied_at=0.2, neutral_at=0.5)


def test_corpus_replies_satisfy_their_user() -> None:
    dialogues = load_chatterbot()
    user = SimulatedUser(dialogues)
    for d in dialogues[:300]:
        assert user.judge(d[0].content, d[1].content) is Verdict.SATISFIED
