"""The keeper's per-block step as three stages, one file each (docs/keeper-decisions.md):

* ``read``: one snapshot pinned to the block (``keeper.chain.view``), and which accounts it
  covers;
* ``assess``: pure -- the engine and the contract's rules mirrored (``keeper.protocol``)
  classify every account and choose its action; no I/O (tests/test_pipeline_purity.py);
* ``execute``: gates, simulation, profitability, sending and recording.

``types`` holds what passes between them; ``keeper.core.KeeperCore`` runs them in order. This
package imports none of its stages: importing ``assess`` loads neither ``read`` nor ``execute``.
"""
