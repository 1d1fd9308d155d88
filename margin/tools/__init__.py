"""Off-chain tools over the engine that have no Solidity counterpart: portfolio files (loader),
explanations (explain), Greeks, the book-wide sweep, synthetic books. The mirror of the
verifier is the rest of margin/ (see docs/mirror.md)."""
