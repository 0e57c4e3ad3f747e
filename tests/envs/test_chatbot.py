"""lmpo/Chatbot-v0: the Gymnasium face passes the env checker; conversations follow the simulated user."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import lmpo  # noqa: F401  (registers the environment)
from lmpo.data import Turn, dialogue_texts, encode_prompt, load_chatterbot, train_tokenizer
from lmpo.envs.chatbot import ChatbotBatch, ChatbotEnv, Conversation
from lmpo.rewards import SimulatedUser, Verdict

DIALOGUE = (Turn("user", "Hi"), Turn("assistant", "Hello there"), Turn("user", "How are you?"),
            Turn("assistant", "I am fine thanks"), Turn("user", "Bye"), Turn("assistant", "Goodbye friend"))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(dialogue_texts(load_chatterbot(["greetings"])), vocab_size=400)


def test_registered_and_env_checker(tokenizer) -> None:
    env = gym.make("lmpo/Chatbot-v0", tokenizer=tokenizer, dialogues=load_chatterbot(["greetings"]), max_len=128)
    check_env(env.unwrapped)
    assert env.action_space.n == len(tokenizer)


def _say(env: ChatbotEnv, text: str):
    ids = env.tokenizer.encode(text, add_special_tokens=False) + [env.eos_id]
    out = None
    for i, t in enumerate(ids):
        out = env.step(t)
        if i < len(ids) - 1:
            assert out[1] == 0.0 and not out[2]
    return out


def test_token_level_episode(tokenizer) -> None:
    env = ChatbotEnv(tokenizer, [DIALOGUE], max_turns=3, max_len=128)
    obs, info = env.reset(seed=0)
    assert info["user"] == "Hi"
    ids = encode_prompt(tokenizer, [DIALOGUE[0]])
    assert obs[: len(ids)].tolist() == ids and (obs[len(ids):] == env.pad_id).all()
    obs, r, term, trunc, info = _say(env, "Hello there")
    assert (r, term, info["verdict"]) == (1.0, False, "satisfied")
    history = [DIALOGUE[0], Turn("assistant", "Hello there"), DIALOGUE[2]]
    assert obs[: len(encode_prompt(tokenizer, history))].tolist() == encode_prompt(tokenizer, history)
    obs, r, term, trunc, info = _say(env, "completely unrelated words")
    assert (r, term) == (0.0, True)


def test_conversation_rules() -> None:
    user = SimulatedUser([DIALOGUE], satisfied_at=0.6, neutral_at=0.3)
    c = Conversation(DIALOGUE, max_turns=3)
    assert c.respond("Hello there", user) is Verdict.SATISFIED and c.user_line == "How are you?"
    assert c.respond("I am fine", user) is Verdict.SATISFIED and c.user_line == "Bye"
    assert c.respond("Goodbye friend", user) is Verdict.SATISFIED and c.done  # the corpus dialogue ended
    short = Conversation(DIALOGUE, max_turns=1)
    assert short.respond("Hello there", user) is Verdict.SATISFIED and short.done  # max_turns reached
    neutral = Conversation(DIALOGUE, max_turns=3)
    assert neutral.respond("there you are", user) is Verdict.NEUTRAL and neutral.done
    with pytest.raises(RuntimeError):
        neutral.respond("again", user)
    unanswered = Conversation(DIALOGUE[:5], max_turns=3)  # ends with a user line the corpus never answers
    unanswered.respond("Hello there", user)
    assert unanswered.respond("I am fine thanks", user) is Verdict.SATISFIED and unanswered.done


def test_batch_face() -> None:
    user = SimulatedUser([DIALOGUE])
    batch = ChatbotBatch([DIALOGUE], user, max_turns=2)
    convs = batch.reset(3, np.random.default_rng(0))
    assert len(convs) == 3 and batch.active == [0, 1, 2]
    verdicts = batch.step({0: "Hello there", 1: "nope", 2: "Hello"})
    assert verdicts[0] is Verdict.SATISFIED and verdicts[1] is Verdict.UNSATISFIED
    assert verdicts[2] is Verdict.SATISFIED  # token F1("Hello", "Hello there") = 2/3 >= 0.6
    assert batch.active == [0, 2]
