"""Run under ``torchrun``: train a recipe data-parallel (DDP or FSDP) and record, on rank 0, what every update
received and gave (the gathered rollout, its progress, the metrics, the weights after it). ``test_distributed.py``
replays the records in one process. Not a test module: it is a worker the test launches."""

import sys
from pathlib import Path

import torch

from lmpo.cli import load_recipe, resolve_recipe
from lmpo.train import distributed
from lmpo.train.trainer import Trainer


def main(recipe: str, out: str, *overrides: str) -> None:
    cfg = load_recipe(resolve_recipe(recipe), list(overrides))
    distributed.init(cfg.train.device)
    trainer = Trainer(cfg)
    records = []
    learn = trainer.learn

    def recorded(rollout, progress):  # type: ignore[no-untyped-def]
        before = rollout._map(lambda t: t.clone())
        metrics = learn(rollout, progress)
        if trainer.gathered is not None:  # FSDP: every process's shards, gathered on rank 0
            from lmpo.train import sharded

            weights = sharded.full_weights(trainer.policy)
        else:
            weights = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
        records.append({"rollout": before, "progress": progress, "metrics": metrics, "weights": weights,
                        "world": distributed.world_size(), "sharded": trainer.gathered is not None})
        return metrics

    trainer.learn = recorded  # type: ignore[method-assign]
    trainer.train()
    if distributed.rank() == 0:
        torch.save({"run_dir": str(trainer.run_dir), "records": records}, Path(out))
    distributed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
