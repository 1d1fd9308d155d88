"""Audit replay: re-derive every margin decision of a block range from chain data alone,
re-check each against the on-chain verifier at its block, compare with the keeper's records.

Modules: ``source`` (an RPC URL, or anvil started from a state dump), ``events`` (the
clearing house's and the feeds' logs: the account set and the decision points), ``derive``
(the engine's full check at each decision point), ``verify`` (``MarginVerifier.fullCheck`` and
``ClearingHouse.marginOf`` by ``eth_call`` at the block; liquidations and margin calls at their
parent block), ``compare`` (the keeper's ``decision`` rows, read in pages), ``record`` (the
keeper's transactions against the chain: complete and true), ``report`` (newline-delimited
JSON, written as the replay runs), ``html`` (the HTML directory built from it), ``run`` (the
command). See docs/replay.md.
"""

from keeper.replay.errors import ReplayInputError
from keeper.replay.run import ReplayOptions, replay

__all__ = ["ReplayInputError", "ReplayOptions", "replay"]
