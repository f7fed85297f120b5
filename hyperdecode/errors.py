"""Exceptions raised for bad input. Each message names the file, tensor, field or parameter at fault."""

__all__ = ["HyperdecodeError", "ConfigError", "WeightsError", "ModelNotFoundError", "FetchError"]


class HyperdecodeError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(HyperdecodeError, ValueError):
    """A model config (config.json, GGUF metadata or preset) is missing, corrupt or inconsistent."""


class WeightsError(HyperdecodeError, ValueError):
    """A checkpoint has a missing, extra or mis-shaped tensor, or an unsupported tensor type."""


class ModelNotFoundError(HyperdecodeError, FileNotFoundError):
    """A model name is neither a preset nor an existing path."""


class FetchError(HyperdecodeError, RuntimeError):
    """The embedded default model could not be fetched or failed its checksum."""
