"""Market-following risk: stress days, EWMA calibration of the grid, backtest statistics.

Pure like the rest of margin/: no I/O, nothing imported from ``keeper``. The calibration math
(:mod:`margin.risk.ewma`, :mod:`margin.risk.recalibration`) is fixed-point WAD, rounding named;
the backtest statistics (:mod:`margin.risk.coverage_tests`) are floating point: they judge the
model off-chain and never feed a number the verifier sees.
"""
