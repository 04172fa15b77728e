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
