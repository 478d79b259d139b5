"""`python -m seal.cli` runs the `seal` command."""

from seal.cli.app import main

main()
