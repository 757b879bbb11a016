"""`python -m guard.cli`: the same as the `guard` command."""

from guard.cli.commands import main

main()
