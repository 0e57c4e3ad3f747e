"""Conversation RL: the collector's packing (rewards, KL shaping, links across turns), token in / token out across
tool turns, and a learning test."""

import copy

import torch

from lmpo.algorithms import PPO
from lmpo.config import PPOConfig
from lmpo.core import FixedKLController, estimate_advantages
from lmpo.data import Turn, dialogue_texts, encode_dialogue, load_chatterbot, train_tokenizer
from lmpo.envs.chatbot import Chatbot, ChatbotSettings
from lmpo.envs.support import Support, SupportSettings
from lmpo.policies import LMPolicy, RecurrentLM, SamplingConfig
from lmpo.rewards import WeightedReward
from lmpo.train.pretrain import PretrainConfig, pretrain
from lmpo.train.text import ConversationCollector

SATISFACTION = WeightedReward.from_specs([{"name": "satisfaction"}])


def _chatbot(dialogues, max_turns: int, satisfied_at: float = 0.6, neutral_at: float = 0.3) -> Chatbot:
    return Chatbot(ChatbotSettings(heldout_fraction=0.0, max_turns=max_turns, satisfied_at=satisfied_at,
                                   neutral_at=neutral_at), dialogues=dialogues)


def _collector(family, tok, ref, kl: float, **kw) -> ConversationCollector:
    return ConversationCollector(family, family.examples("train"), tok, SATISFACTION, ref, FixedKLController(kl),
                                 **kw)


def _setup(dialogues, epochs: int, seed: int = 0):
    tok = train_tokenizer(dialogue_texts(dialogues), vocab_size=300)
    torch.manual_seed(seed)
    pol = LMPolicy(RecurrentLM(len(tok), "gru", embed=64, hidden=128), tok.pad_token_id, tok.eos_token_id,
                   SamplingConfig(temperature=1.0, max_new_tokens=16))
    if epochs:
        pretrain(pol, [encode_dialogue(tok, d) for d in dialogues], [],
                 PretrainConfig(epochs=epochs, lr=1e-2, batch_size=8), progress=False)
    return tok, pol


def test_packing_links_turns_and_shapes_rewards() -> None:
    dialogue = (Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "How are you?"),
                Turn("assistant", "Fine"))
    tok, pol = _setup([dialogue], epochs=0)
    # a user satisfied by anything: every conversation runs its two turns
    family = _chatbot([dialogue], 2, satisfied_at=0.0, neutral_at=0.0)
    ref = copy.deepcopy(pol)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    col = _collector(family, tok, ref, 0.1, conversations=2, samples_per_prompt=2)
    ro, stats, _ = col.collect(pol)
    assert ro.batch_size == 8 and stats.mean_turns == 2.0 and stats.satisfaction == 1.0
    last = ro.mask.sum(1).long() - 1
    kl = (ro.logprobs - ref.evaluate(ro.obs, ro.actions).log_probs) * ro.mask  # k1
    expected = -0.1 * kl
    expected[torch.arange(8), last] += 1.0
    assert torch.allclose(ro.rewards, expected, atol=1e-5)
    assert ro.values is not None and ro.next_values is not None
    for row in range(0, 8, 2):  # rows (2i, 2i+1) are the two replies of one conversation
        assert ro.dones[row, last[row]] == 1 and ro.dones[row + 1, last[row + 1]] == 1
        assert torch.isclose(ro.next_values[row, last[row]], ro.values[row + 1, 0])
        assert ro.next_values[row + 1, last[row + 1]] == 0
    assert ro.group_ids is not None and ro.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ro.episode_ids is not None and ro.episode_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # Monte-Carlo returns run on through a conversation: a first reply's return includes the second's
    g = estimate_advantages(ro, "returns", 1.0, baseline="none").returns
    assert g is not None
    for row in range(0, 8, 2):
        assert torch.isclose(g[row, 0], ro.rewards[row].sum() + ro.rewards[row + 1].sum(), atol=1e-5)


def test_ppo_raises_satisfaction_above_the_pretrained_baseline() -> None:
    dialogues = [d[:2] for d in load_chatterbot(["greetings"])][:24]
    tok, pol = _setup(dialogues, epochs=15)
    family = _chatbot(dialogues, 1)

    def expected_satisfaction() -> float:  # of the policy's own sampled replies, 8 per conversation
        torch.manual_seed(123)
        col = _collector(family, tok, None, 0.0, samples_per_prompt=8)
        return col.collect(pol, indices=list(range(len(dialogues))))[1].satisfaction

    baseline = expected_satisfaction()
    collector = _collector(family, tok, copy.deepcopy(pol).eval(), 0.02, conversations=16, samples_per_prompt=4,
                           seed=0)
    ppo = PPO(PPOConfig(lr=1e-3, epochs=4, batch_size=32), pol)
    for _ in range(60):
        rollout, _, _ = collector.collect(pol)
        ppo.update(pol, estimate_advantages(rollout, "gae", 1.0, 0.95, whiten=True), 0.0)
    after = expected_satisfaction()
    assert after >= baseline + 0.3 and after >= 0.5, (baseline, after)


class _LookupFirst(Support):
    """Support-v0 whose bot always looks the entity up twice before its answer is judged (an untrained policy
    would rarely write a lookup)."""

    def conversation(self):
        conv = super().conversation()
        step = conv.step

        def forced(reply: str):
            return step(f"[lookup: {conv.goal[conv.asked - 1].entity}]" if conv.lookups < 2 else reply)

        conv.step = forced
        return conv


def test_token_in_token_out_across_tool_turns() -> None:
    """The ids a policy sampled are the ids of its next prompt and of the rollout, never re-tokenized; the tool's
    turn sits between them as context."""
    family = _LookupFirst(SupportSettings(products=30, orders=30, transcripts=60, train_goals=8, eval_goals=4))
    tok = train_tokenizer(family.tokenizer_texts(), vocab_size=600)
    torch.manual_seed(0)
    pol = LMPolicy(RecurrentLM(len(tok), "gru", embed=16, hidden=32), tok.pad_token_id, tok.eos_token_id,
                   SamplingConfig(temperature=1.0, max_new_tokens=12))
    col = ConversationCollector(family, family.examples("train"), tok, WeightedReward.from_specs(
        [{"name": "satisfaction"}, {"name": "lookup_cost"}]), None, FixedKLController(0.0),
        samples_per_prompt=1, max_prompt_tokens=10_000)
    ro, _, played = col.collect(pol, indices=list(range(8)))
    assert played.turns == [3] * 8  # two lookups, then the (unsatisfying) answer
    tool_turns, retokenized_differs, start = 0, 0, 0
    for n in played.turns:
        replies = played.replies[start:start + n]
        for row, r in enumerate(replies, start):
            assert ro.actions[row][ro.mask[row] > 0].tolist() == r.tokens.tolist()  # trained = sampled
            retokenized_differs += tok.encode(r.text, add_special_tokens=False) != r.tokens.tolist()
        for a, b in zip(replies, replies[1:]):
            sampled = a.prompt + a.tokens.tolist()
            assert b.prompt[:len(sampled)] == sampled  # the next prompt continues with the sampled ids verbatim
            tool_turns += "<|tool|>" in tok.decode(b.prompt[len(sampled):])
        start += n
    assert tool_turns == 16  # tool results came between the replies
    assert retokenized_differs > 0  # re-encoding the decoded text would have changed what is trained on
    assert [r.info["lookups"] for r in played.replies[:3]] == [1, 1, 0]
    assert [r.reward for r in played.replies[:2]] == [-0.05, -0.05]
