"""hyperdecode: an open, Python-first, low-latency LLM inference stack."""
from .engine.llm import LLM
from .engine.sampling import SamplingParams
from .engine.sequence import Generation, GenerationStats
from .errors import ConfigError, FetchError, HyperdecodeError, ModelNotFoundError, WeightsError
from .model.config import PRESETS, ModelConfig

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "Generation", "GenerationStats", "ModelConfig", "PRESETS",
           "HyperdecodeError", "ConfigError", "WeightsError", "ModelNotFoundError", "FetchError"]
