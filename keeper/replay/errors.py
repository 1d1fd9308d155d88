"""Named rejections of the replay's input (exit status 2, nothing is read or written)."""

from __future__ import annotations


class ReplayInputError(Exception):
    """Bad input to ``replay``, printed as ``error: <name>: <message>``."""

    name = "ReplayInputError"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.name}: {message}")
        self.message = message


class DeploymentFileNotFound(ReplayInputError):
    name = "DeploymentFileNotFound"


class DeploymentFileUnusable(ReplayInputError):
    name = "DeploymentFileUnusable"


class StateDumpNotFound(ReplayInputError):
    name = "StateDumpNotFound"


class StateDumpUnusable(ReplayInputError):
    name = "StateDumpUnusable"


class StateDumpWithoutHistory(ReplayInputError):
    name = "StateDumpWithoutHistory"


class SourceRequired(ReplayInputError):
    name = "SourceRequired"


class ChainMismatch(ReplayInputError):
    """The node is not the deployment's chain (wrong chain id, code or ABI)."""

    name = "ChainMismatch"


class NodeUnavailable(ReplayInputError):
    name = "NodeUnavailable"


class BadBlockRange(ReplayInputError):
    name = "BadBlockRange"


class StoreUnavailable(ReplayInputError):
    name = "StoreUnavailable"
