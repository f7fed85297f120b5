"""hyperdecode: an open, Python-first, low-latency LLM inference stack.

The engine (and torch with it) is imported on first use of a name below, so that `python -m hyperdecode` starts
its command, and its Ctrl-C handling, before the heavy imports run.
"""
from importlib import import_module

from .errors import ConfigError, FetchError, HyperdecodeError, ModelNotFoundError, RequestError, WeightsError
from .model.presets import PRESETS

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "Generation", "GenerationStats", "ModelConfig", "PRESETS",
           "HyperdecodeError", "ConfigError", "WeightsError", "ModelNotFoundError", "FetchError", "RequestError"]

_LAZY = {"LLM": ".engine.llm", "Generation": ".engine.output", "GenerationStats": ".engine.output",
         "SamplingParams": ".engine.sampling", "ModelConfig": ".model.registry"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hyperdecode' has no attribute '{name}'")
