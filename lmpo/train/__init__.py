"""Training: the loop, tasks (control and dialogue), collection, evaluation, checkpoints and logging."""

from lmpo.train.tasks import make_task
from lmpo.train.trainer import Trainer, read_run_config

__all__ = ["Trainer", "make_task", "read_run_config"]
