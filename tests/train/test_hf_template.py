"""A Hugging Face model with its own tokenizer and chat template, built here: RL on Prompts-v0 and on a multi-turn
environment uses the template, the model's special tokens and its generation config's eos ids, adds no token of
lmpo's and resizes nothing; the result loads back with ``AutoModelForCausalLM.from_pretrained``."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import lmpo
from lmpo.cli import main
from lmpo.data import TemplateFormat, Turn, load_chatterbot
from lmpo.train.logging import read_metrics
from tests.conftest import gpt2_style_tokenizer
from tests.data.test_chat import CHATML

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train.progress=false", "text.eval_samples=1", "text.pretrain.epochs=1", "text.pretrain.lr=0.003",
         "text.sampling.max_new_tokens=12", "algo.lr=0.0005"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 and a ChatML tokenizer (eos <|im_end|>, a pad of its own); the generation config also
    stops at <|endoftext|>."""
    path = tmp_path_factory.mktemp("chatml-gpt2")
    texts = [t.content for d in load_chatterbot(["greetings", "emotion"]) for t in d]
    texts += [line for line in (ROOT / "examples" / "prompts.jsonl").read_text().splitlines()]
    tok = gpt2_style_tokenizer(texts + ["user assistant"] * 50, vocab_size=600)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "pad_token": "<pad>"})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _hf(path: Path) -> list[str]:
    return ["policy.kind=hf", f"policy.path={path}"]


def test_prompts_with_the_model_s_own_chat_template(tmp_path: Path, chat_model: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["train", "configs/prompts-example.yaml", *TRAIN, *_hf(chat_model), f"train.runs_dir={tmp_path}",
                 "name=p", "train.total_steps=640"]) == 0
    run = tmp_path / "p"
    original = AutoTokenizer.from_pretrained(chat_model)
    saved = AutoTokenizer.from_pretrained(run / "hf")
    # the model's own tokenizer, template and special tokens: nothing of lmpo's added, nothing resized
    assert saved.get_vocab() == original.get_vocab() and saved.chat_template == CHATML
    assert "<|assistant|>" not in saved.get_vocab() and saved.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(run / "hf")
    assert model.get_input_embeddings().weight.shape[0] == len(original)
    assert list(model.generation_config.eos_token_id) == [original.eos_token_id,
                                                          original.convert_tokens_to_ids("<|endoftext|>")]
    # RL moved the weights that from_pretrained loads; lmpo.load gives the same model back
    base = AutoModelForCausalLM.from_pretrained(chat_model)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)
    policy, tokenizer = lmpo.load(run)
    assert policy.stop_ids == (original.eos_token_id, original.convert_tokens_to_ids("<|endoftext|>"))
    assert torch.equal(policy.body.model.lm_head.weight, model.lm_head.weight)
    # the loaded pair chats through transformers alone, with the template
    ids = saved.apply_chat_template([{"role": "user", "content": "Can you book a taxi?"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    records = read_metrics(run)
    assert "eval/heldout_reward" in records[-1] and records[0]["pretrain/loss"] > 0


def test_a_multi_turn_environment_with_the_model_s_own_chat_template(tmp_path: Path, chat_model: Path) -> None:
    # a user satisfied with anything keeps talking: a conversation has two replies (where its dialogue goes on), the
    # second generated after the template's closing of the first and the user's next line
    assert main(["train", "chatbot", *TRAIN, *_hf(chat_model), f"train.runs_dir={tmp_path}", "name=c",
                 "env.kwargs.categories=[emotion]", "env.kwargs.satisfied_at=0.0", "env.kwargs.neutral_at=0.0",
                 "env.kwargs.max_turns=2", "text.conversations_per_update=4", "text.samples_per_prompt=2",
                 "train.total_steps=32", "algo.name=reinforce", "text.eval_conversations=4"]) == 0
    records = read_metrics(tmp_path / "c")
    assert records[-1]["eval/train_turns"] == 2.0 and records[1]["charts/turns"] > 1.5
    task, policy, _ = lmpo.api.load_run(tmp_path / "c")
    assert isinstance(task.chat, TemplateFormat)
    _, _, played = task.play(policy, task.eval_examples("train")[:2], task.sampling.as_greedy())
    # the second reply's context: the opening, the first reply's ids as generated, the template's turn change
    second = played.replies[1]
    first = played.replies[0]
    assert second.prompt[:len(first.prompt)] == first.prompt
    assert second.prompt[len(first.prompt):len(first.prompt) + len(first.tokens)] == first.tokens.tolist()
    user_line = task.tokenizer.decode(second.prompt[len(first.prompt) + len(first.tokens):])
    assert user_line.endswith(f"<|im_start|>user\n{second.user}<|im_end|>\n<|im_start|>assistant\n")
    assert Turn("user", second.user) in [t for t, _ in played.transcripts[0]]
