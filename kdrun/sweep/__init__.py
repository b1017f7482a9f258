"""Multirun: the stacked launcher and its trainer, job configs and groups, resuming a sweep, the end-of-sweep report.

Hydra imports this package (its callbacks) in every run: nothing here imports torch at import time."""
