"""The ``metarch`` command-line interface."""
