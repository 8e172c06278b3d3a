"""metarch: meta-learned architecture design for few-shot tasks under device budgets."""

from metarch.errors import MetarchError

__version__ = "0.1.0"

__all__ = ["MetarchError", "__version__"]
