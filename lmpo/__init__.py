"""lmpo: REINFORCE, TRPO and PPO for language-model and control policies."""

import lmpo.envs  # noqa: F401  (registers lmpo/Chatbot-v0 with Gymnasium)
from lmpo.api import load

__all__ = ["load"]
