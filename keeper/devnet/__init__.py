"""Local devnet: a managed anvil process for tests, the demo and audit replay."""

from keeper.devnet.anvil import Anvil, AnvilError, AnvilNotFound, AnvilStartError

__all__ = ["Anvil", "AnvilError", "AnvilNotFound", "AnvilStartError"]
