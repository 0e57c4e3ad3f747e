"""The whole feedback loop on a tiny model: serve -> simulated users rate replies through the HTTP API -> export ->
reward model -> RL from the served model -> reload, with requests in flight across the reload.

The simulated users like short replies (at most 10 characters). Nothing tells the reward model or RL so but the
ratings; the test asserts that the served version changed and that the new policy scores higher on the
feedback-trained reward model on greetings that neither the ratings, the pre-training nor RL saw.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import threading
import time
from pathlib import Path

import httpx

from lmpo.cli import main
from lmpo.data.corpus import load_chatterbot
from lmpo.rewards.registry import WeightedReward
from lmpo.train.checkpoint import latest_checkpoint
from tests.serve.conftest import start_server

GREETINGS = ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.embed=32", "policy.hidden=64",
             "env.kwargs.categories=[greetings]", "text.vocab_size=300", "text.pretrain.epochs=40",
             "text.sampling.max_new_tokens=16", "env.kwargs.max_turns=2", "train.progress=false", "seed=5",
             "name=greeter"]
HELD_OUT = ["Hey there", "Good evening", "Hi, how are things?", "Howdy", "Pleased to meet you", "Hello friend",
            "Good afternoon", "Yo", "Hiya", "Hey, what is new?", "Morning!", "Salutations"]
SHORT = 10  # the users' taste: a reply of at most this many characters gets a thumbs-up


def likes(reply: str) -> bool:
    return len(reply) <= SHORT


class Users:
    """Simulated users talking to the server through its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url, self.http = url, httpx.Client(timeout=120)

    def ask(self, line: str, n: int, seed: int | None = None) -> dict:
        body = {"model": "greeter", "messages": [{"role": "user", "content": line}], "n": n, "max_tokens": 16,
                "temperature": 1.0, "top_p": 1.0, "seed": seed}
        r = self.http.post(f"{self.url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return r.json()

    def rate(self, lines: list[str], rounds: int) -> float:
        """Ask for four replies per line per round and rate each; the share rated up."""
        ups = []
        for _ in range(rounds):
            for line in lines:
                out = self.ask(line, 4)
                for choice in out["choices"]:
                    ups.append(likes(choice["message"]["content"]))
                    self.http.post(f"{self.url}/v1/feedback", json={
                        "completion_id": out["id"], "choice": choice["index"],
                        "rating": "up" if ups[-1] else "down"}).raise_for_status()
        return statistics.mean(ups)

    def replies(self, lines: list[str], seed: int) -> tuple[list[str], list[str], str]:
        """Eight replies per line (prompts, replies) and the version that wrote them."""
        prompts, replies, version = [], [], ""
        for i, line in enumerate(lines):
            out = self.ask(line, 8, seed + i)
            prompts += [line] * 8
            replies += [c["message"]["content"] for c in out["choices"]]
            version = out["system_fingerprint"]
        return prompts, replies, version


class Traffic(threading.Thread):
    """Streamed requests, one after another, until stopped: none may be dropped across a reload."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.done, self.stop, self.failures = url, 0, threading.Event(), []

    def run(self) -> None:
        body = {"model": "greeter", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                "stream": True}
        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                try:
                    with http.stream("POST", f"{self.url}/v1/chat/completions", json=body) as r:
                        lines = list(r.iter_lines())
                    if r.status_code != 200 or lines[-2:] != ["data: [DONE]", ""] and lines[-1:] != ["data: [DONE]"]:
                        self.failures.append(f"{r.status_code}: {lines[-3:]}")
                    self.done += 1
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))


def test_ratings_train_a_reward_model_and_rl_makes_the_served_model_better(tmp_path: Path) -> None:
    def plain(line: str) -> str:
        return re.sub(r"\W", "", line.lower())

    corpus_lines = {plain(t.content) for d in load_chatterbot(["greetings"]) for t in d}
    assert not corpus_lines & set(map(plain, HELD_OUT))  # held out from pre-training and RL
    assert main(["pretrain", "chatbot", *GREETINGS, f"train.runs_dir={tmp_path}"]) == 0
    run = tmp_path / "greeter"
    server = start_server(run, "--watch")
    try:
        users = Users(server.url)
        # 1. users rate replies through the API
        rated_lines = sorted({d[0].content for d in load_chatterbot(["greetings"])})
        share_up = users.rate(rated_lines, rounds=8)
        assert 0.2 < share_up < 0.8  # both kinds of reply were there to rate
        prompts, before, version0 = users.replies(HELD_OUT, seed=1000)
        assert version0 == "iter_0000000"
        # 2. export the ratings as preference pairs, train a reward model on them
        pairs = tmp_path / "pairs.jsonl"
        assert main(["feedback", "export", str(run), "-o", str(pairs)]) == 0
        exported = [json.loads(line) for line in pairs.read_text().splitlines()]
        assert len(exported) > 100
        assert all(len(p["chosen"][0]["content"]) <= SHORT < len(p["rejected"][0]["content"]) for p in exported)
        assert main(["train-rm", f"data.pairs={pairs}", f"model.init={run}", "train.epochs=4", "name=rm",
                     f"train.runs_dir={tmp_path}", "train.progress=false"]) == 0
        # 3. RL from the served model against the feedback-trained reward, while the server serves
        traffic = Traffic(server.url)
        traffic.start()
        assert main(["train", "--resume", str(run), f"text.rewards=[{{name: model, path: {tmp_path / 'rm'}}}]",
                     "train.total_steps=1280", "algo.lr=0.0005", "algo.epochs=4", "algo.target_kl=0.1",
                     "text.eval_conversations=2", "train.progress=false"]) == 0
        # 4. the server reloads the newest checkpoint without dropping a request
        final = latest_checkpoint(run / "checkpoints")
        assert final is not None and final.name != version0
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/health").json()["version"] != final.name:
            assert time.monotonic() < deadline, "the server did not load the newest checkpoint"
            time.sleep(0.2)
        time.sleep(0.5)
        traffic.stop.set()
        traffic.join(timeout=120)
        assert traffic.done > 0 and traffic.failures == []
        prompts_after, after, version1 = users.replies(HELD_OUT, seed=1000)
        assert version1 == final.name and prompts_after == prompts
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f'version="{final.name}"' in metrics
        assert float(re.search(r"^lmpo_model_reloads_total (\S+)$", metrics, re.M).group(1)) >= 1  # type: ignore
    finally:
        assert server.stop()
    with sqlite3.connect(run / "feedback.sqlite") as db:
        versions = {v for (v,) in db.execute("SELECT DISTINCT version FROM completions")}
    assert {version0, final.name} <= versions  # every record names the version that wrote it
    # 5. the new policy scores higher on the feedback-trained reward, on greetings no one rated or trained on
    reward = WeightedReward.from_specs([{"name": "model", "path": str(tmp_path / "rm")}])
    score_before = statistics.mean(reward(prompts, before, {})[0])
    score_after = statistics.mean(reward(prompts, after, {})[0])
    assert score_after > score_before + 1.0, (score_before, score_after)
    assert statistics.mean(map(likes, after)) > statistics.mean(map(likes, before)) + 0.2  # and the users agree
