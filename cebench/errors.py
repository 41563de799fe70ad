"""User-facing errors. The CLI prints their message as one line and exits with status 2."""

from __future__ import annotations


class CebenchError(Exception):
    """An error caused by the user's input (data, config, checkpoint), not a bug."""


class DatasetMissingError(CebenchError):
    pass


class BadImageError(CebenchError):
    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ConfigError(CebenchError):
    pass


class CheckpointError(CebenchError):
    pass


class NonFiniteLossError(CebenchError):
    pass
