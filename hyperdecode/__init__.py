"""hyperdecode: an open, Python-first, low-latency LLM inference stack."""
from .engine.llm import LLM
from .engine.output import Generation, GenerationStats
from .engine.sampling import SamplingParams
from .errors import ConfigError, FetchError, HyperdecodeError, ModelNotFoundError, RequestError, WeightsError
from .model.presets import PRESETS
from .model.registry import ModelConfig

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "Generation", "GenerationStats", "ModelConfig", "PRESETS",
           "HyperdecodeError", "ConfigError", "WeightsError", "ModelNotFoundError", "FetchError", "RequestError"]
