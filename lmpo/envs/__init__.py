"""Environments: Gymnasium vector envs for control, and lmpo's text environments (registered here)."""

import gymnasium as gym

from lmpo.envs.vector import make_vector_env

if "lmpo/Chatbot-v0" not in gym.registry:
    gym.register(id="lmpo/Chatbot-v0", entry_point="lmpo.envs.chatbot:ChatbotEnv")

__all__ = ["make_vector_env"]
