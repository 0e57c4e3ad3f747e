"""Environments: Gymnasium vector envs for control, and lmpo's text environments (registered here by id)."""

from lmpo.envs.chatbot import Chatbot
from lmpo.envs.prompts import Prompts
from lmpo.envs.support import Support
from lmpo.envs.text import register_text_env, text_env
from lmpo.envs.vector import make_vector_env

register_text_env("lmpo/Chatbot-v0", Chatbot, "lmpo.envs.chatbot:ChatbotEnv")
register_text_env("lmpo/Prompts-v0", Prompts, "lmpo.envs.prompts:PromptsEnv")
register_text_env("lmpo/Support-v0", Support, "lmpo.envs.support:SupportEnv")

__all__ = ["make_vector_env", "register_text_env", "text_env"]
