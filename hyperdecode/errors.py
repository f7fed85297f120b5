"""Exceptions raised for bad input. Each message names the file, tensor, field or parameter at fault."""

__all__ = ["HyperdecodeError", "ConfigError", "WeightsError", "ModelNotFoundError", "FetchError", "RequestError",
           "SequenceError"]


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


class RequestError(HyperdecodeError, ValueError):
    """A generation request (prompt, messages or sampling parameters) is invalid; `param` names the field. The
    server answers it with a 400 naming the same field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class SequenceError(HyperdecodeError, RuntimeError):
    """One sequence failed inside the engine (its forward row, sampler or detokeniser raised); the others in its
    batch were not affected."""
