"""Environments: Gymnasium vector envs for control (text environments register here in later versions)."""

from lmpo.envs.vector import make_vector_env

__all__ = ["make_vector_env"]
