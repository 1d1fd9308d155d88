"""Test suite. A package, so helpers import as ``from tests.parity import ...`` under xdist."""
