"""The contracts' rules the keeper mirrors, one module per contract concern (pure: no I/O).

* ``oracle``: OracleLib.read's checks and errors;
* ``bounty``: the liquidation's penalty and bounty (``_chargePenalty``);
* ``liquidation``: the liquidation's effect on a book (``_handOver``: close quantities, prices);
* ``settlement``: the round ``settleInstrument`` accepts.

Each must match the contract to the wei: tests/test_chain.py and tests/test_core.py check them
against the deployed contracts.
"""
