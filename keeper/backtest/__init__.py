"""`keeper backtest`: the grid requirement of a book over a price history, with coverage tests.

prices.py reads a daily price CSV; engine.py runs margin's full check day by day; report.py
writes the JSON summary and the self-contained HTML report; cmd.py is the command.
"""
