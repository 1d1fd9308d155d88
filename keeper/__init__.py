"""The clearing keeper service: chain access, indexing, store, decisions, transactions, CLI."""
