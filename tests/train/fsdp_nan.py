"""Run under ``torchrun`` with ``train.fsdp``: put a NaN in one process's shard of one weight and check that every
process stops with ``TrainingDiverged`` naming it (each checks its own shards, then all agree). Not a test module: a
worker ``test_distributed.py`` launches; it prints ``STOPPED <rank> <message>`` on each process."""

import sys

import torch

from lmpo.cli import load_recipe, resolve_recipe
from lmpo.train import distributed
from lmpo.train.runtime import TrainingDiverged
from lmpo.train.trainer import Trainer


def main(recipe: str, *overrides: str) -> None:
    cfg = load_recipe(resolve_recipe(recipe), list(overrides))
    distributed.init(cfg.train.device)
    trainer = Trainer(cfg)
    name = "body.model.transformer.h.1.mlp.c_fc.weight"
    if distributed.rank() == 1:
        with torch.no_grad():
            trainer.policy.get_parameter(name).to_local()[0, 0] = float("nan")
    try:
        trainer._check_update({})
    except TrainingDiverged as e:
        print(f"STOPPED {distributed.rank()} {e}", flush=True)
    trainer.close()
    distributed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
