"""The logging sinks of ``train.loggers``: metrics.jsonl always, TensorBoard by default, Weights & Biases offline
(no network, no account); and every evaluation's sample completions with their rewards."""

import json
from pathlib import Path

import pytest

from lmpo.cli import main
from lmpo.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.progress=false", "text.eval_samples=1", "text.pretrain.epochs=2", "train.total_steps=320",
        "train.eval_every=160"]


def _events(run: Path) -> tuple[set[str], list[str]]:
    """The scalar tags and the text summaries of a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [e.tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag)]
    return set(acc.Tags()["scalars"]), texts


def test_samples_go_to_jsonl_and_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["train", "configs/prompts-example.yaml", *TINY, f"train.runs_dir={tmp_path}", "name=tb"]) == 0
    run = tmp_path / "tb"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    # the evaluations before RL, after updates 3 and 5 (every 160 replies) and the final one; 8 greedy replies per
    # split each
    assert sorted({s["iteration"] for s in samples}) == [0, 3, 5]
    assert len(samples) == 4 * 2 * 8
    first = samples[0]
    assert set(first) == {"iteration", "env_steps", "split", "prompt", "completion", "reward",
                          "examples/my_reward.py:helpful"}
    assert first["reward"] == first["examples/my_reward.py:helpful"]
    scalars, texts = _events(run)
    assert {"eval/heldout_sampled_reward", "eval/heldout_sampled_ref_ppl", "charts/kl_ref"} <= scalars
    assert len(texts) == 4 and "| split | prompt | completion | reward |" in texts[0]
    assert first["completion"].split()[0] in texts[0]


def test_wandb_offline_and_no_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")  # the wandb extra; installed by `make test`
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["train", "configs/prompts-example.yaml", *TINY, f"train.runs_dir={tmp_path}", "name=wb",
                 "train.loggers=[wandb]", "train.wandb.tags=[test]"]) == 0
    run = tmp_path / "wb"
    assert not (run / "tb").exists() and read_metrics(run)[-1]["final"]
    offline = list((run / "wandb").glob("offline-run-*"))
    run_id = (run / "wandb_id").read_text()
    assert len(offline) == 1 and offline[0].name.endswith(run_id)
    # the run's record file (protobuf) names every logged key; the samples table is saved as a media file
    data = next(offline[0].glob("*.wandb")).read_bytes()
    assert all(key.encode() in data for key in ("eval/heldout_sampled_reward", "charts/kl_ref", "samples"))
    assert list((offline[0] / "files" / "media" / "table").glob("samples_*.table.json"))


def test_wandb_without_the_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", "cartpole-ppo", f"train.runs_dir={tmp_path}", "train.loggers=[wandb]"]) == 2
    assert "pip install 'lmpo[wandb]'" in capsys.readouterr().err
