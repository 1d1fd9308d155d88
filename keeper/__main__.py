"""`python -m keeper` = the `keeper` command."""

from keeper.cli import main

main()
