"""Entry point for ``python -m metarch``."""

from metarch.cli.app import main

main()
