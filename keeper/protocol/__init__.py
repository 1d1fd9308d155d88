"""The contracts' rules the keeper mirrors, one module per contract concern (pure: no I/O,
except ``recalibration``, which reads the feeds' rounds for its job).

* ``oracle``: OracleLib.read's checks and errors;
* ``bounty``: the liquidation's penalty and bounty (``_chargePenalty``);
* ``liquidation``: the liquidation's effect on a book (``_handOver``: close quantities, prices);
* ``settlement``: the round ``settleInstrument`` accepts, and the gas room ``settleAccount``
  needs for what a settlement or poke of the same block adds;
* ``funding``: which perpetuals are due ``pokeFunding``, and the gas room a liquidation needs
  for a poke of the same block;
* ``assets``: the clearing house's asset constants (``NO_UNDERLYING``);
* ``recalibration``: the risk parameters' recalibration from the feeds' rounds (the job's
  chain state and checks).

Each must match the contract to the wei: tests/test_chain.py and tests/test_core.py check them
against the deployed contracts.
"""
