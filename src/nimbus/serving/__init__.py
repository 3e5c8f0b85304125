"""Online inference: the OIP v2 server, dynamic batcher and inference backends."""

from nimbus.serving.app import InferenceApp, create_app, serve, uvicorn_config
from nimbus.serving.batcher import Batcher, BatchPolicy, Decision
from nimbus.serving.errors import Overloaded, ProtocolError
from nimbus.serving.predictor import Predictor

__all__ = [
    "BatchPolicy",
    "Batcher",
    "Decision",
    "InferenceApp",
    "Overloaded",
    "Predictor",
    "ProtocolError",
    "create_app",
    "serve",
    "uvicorn_config",
]
