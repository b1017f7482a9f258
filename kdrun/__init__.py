"""kdrun: a command-line experiment runner for knowledge distillation."""

__version__ = "0.1.0"
