"""`python -m seal.cli` runs the `seal` command."""

from seal.cli.main import main

main()
