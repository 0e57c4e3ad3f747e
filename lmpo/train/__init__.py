"""Training: the loop, collection, evaluation, checkpoints and logging sinks."""

from lmpo.train.trainer import Trainer, build_policy, read_run_config

__all__ = ["Trainer", "build_policy", "read_run_config"]
