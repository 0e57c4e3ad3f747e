"""``lmpo serve``: an OpenAI-compatible chat server with a web page, metrics, and a feedback store for training."""

from lmpo.serve.app import ServeSettings, create_app
from lmpo.serve.engine import ServedModel
from lmpo.serve.schema import Limits
from lmpo.serve.store import FeedbackStore
from lmpo.serve.worker import ModelSource

__all__ = ["FeedbackStore", "Limits", "ModelSource", "ServeSettings", "ServedModel", "create_app"]
