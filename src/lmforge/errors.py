"""Exception types shared by the whole package, so callers can catch one family per kind of fault."""

from __future__ import annotations


class LmforgeError(Exception):
    """Base class of every error lmforge raises on purpose (bad config, bad input, missing artifact)."""


class ConfigError(LmforgeError, ValueError):
    """A configuration value is unknown, of the wrong type, or impossible.

    Args:
        key: dotted key of the offending value (e.g. ``pretrain.model.n_embd``), or "" if not one key.
        message: what is wrong and what would be valid.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def __reduce__(self) -> tuple:  # picklable with both arguments (errors cross process boundaries)
        return (ConfigError, (self.key, self.message))

    def under(self, prefix: str) -> ConfigError:
        """Return the same error with ``prefix.`` put before its key (used when nesting configs)."""
        if not prefix:
            return self
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.message)


class InputError(LmforgeError):
    """An input (file, directory, source, upstream stage output) is missing or unreadable."""


class UnsafePickleError(InputError):
    """A pickle file (``train_state.pt``, ``pytorch_model.bin``) was refused by ``torch.load(...,
    weights_only=True)``: it holds code or objects beyond tensors and plain data, which unpickling
    would run or build.

    Args:
        path: the refused file.
        detail: what torch named (e.g. ``unsupported GLOBAL posix.system``), or "".
    """

    def __init__(self, path: str, detail: str = ""):
        self.path = str(path)
        self.detail = detail
        found = f" ({detail})" if detail else ""
        super().__init__(
            f"{path}: refused: this pickle holds code or objects beyond tensors and plain data{found}, "
            "and loading it could run arbitrary code; use weights saved as safetensors, or convert the "
            "file where you trust its origin"
        )

    def __reduce__(self) -> tuple:  # picklable with both arguments (errors cross process boundaries)
        return (UnsafePickleError, (self.path, self.detail))

    @classmethod
    def from_exception(cls, path: object, exc: BaseException) -> UnsafePickleError:
        """The error for ``path`` from torch's ``UnpicklingError``, keeping the line naming the culprit."""
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "nsupported" in ln]
        return cls(str(path), lines[0].rstrip(".") if lines else "")
