"""lmpo/Chatbot-v0: the Gymnasium face passes the env checker; conversations follow the simulated user."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import lmpo  # noqa: F401  (registers the environment)
from lmpo.data import Turn, dialogue_texts, encode_prompt, load_chatterbot, train_tokenizer
from lmpo.envs.chatbot import Chatbot, ChatbotEnv, ChatbotSettings, SimulatedUser

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
    assert info["turns"] == ["Hi"]
    ids = encode_prompt(tokenizer, [DIALOGUE[0]])
    assert obs[: len(ids)].tolist() == ids and (obs[len(ids):] == env.pad_id).all()
    obs, r, term, trunc, info = _say(env, "Hello there")
    assert (r, term, info["verdict"]) == (1.0, False, 1.0)
    history = [DIALOGUE[0], Turn("assistant", "Hello there"), DIALOGUE[2]]
    assert obs[: len(encode_prompt(tokenizer, history))].tolist() == encode_prompt(tokenizer, history)
    obs, r, term, trunc, info = _say(env, "completely unrelated words")
    assert (r, term) == (0.0, True)


def _conversation(max_turns: int, dialogue=DIALOGUE):
    family = Chatbot(ChatbotSettings(heldout_fraction=0.0, max_turns=max_turns), dialogues=[DIALOGUE])
    conv = family.conversation()
    assert conv.reset({"dialogue": dialogue}) == [dialogue[0]]
    return conv


def test_conversation_rules() -> None:
    c = _conversation(3)
    step = c.step("Hello there")
    assert step.info["verdict"] == 1.0 and step.turns == [DIALOGUE[2]] and not step.done
    step = c.step("I am fine")
    assert step.info["verdict"] == 1.0 and step.turns == [DIALOGUE[4]]
    step = c.step("Goodbye friend")
    assert step.info["verdict"] == 1.0 and step.done and step.turns == []  # the corpus dialogue ended
    short = _conversation(1)
    assert short.step("Hello there").done  # max_turns reached
    neutral = _conversation(3)
    step = neutral.step("there you are")
    assert step.info["verdict"] == 0.5 and step.done
    with pytest.raises(RuntimeError):
        neutral.step("again")
    unanswered = _conversation(3, DIALOGUE[:5])  # ends with a user line the corpus never answers
    unanswered.step("Hello there")
    step = unanswered.step("I am fine thanks")
    assert step.info["verdict"] == 1.0 and step.done


def test_splits_by_opening_and_saves_its_corpus(tmp_path) -> None:
    dialogues = load_chatterbot()
    family = Chatbot(ChatbotSettings(heldout_fraction=0.2), dialogues=dialogues)
    train = {SimulatedUser.key(d[0].content) for d in family.train}
    heldout = {SimulatedUser.key(d[0].content) for d in family.heldout}
    assert family.heldout and not train & heldout  # no held-out opening is a training opening
    assert 0.1 < len(family.heldout) / len(family.dialogues) < 0.3
    family.save(tmp_path)
    again = Chatbot(ChatbotSettings(heldout_fraction=0.2, jsonl="/nonexistent.jsonl"), run_dir=tmp_path)
    assert again.train == family.train and again.heldout == family.heldout
    assert family.tool("[lookup: anything]") is None
