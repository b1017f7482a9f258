"""Training: the loop (`engine.fit`), its recipe and optimiser, evaluation, and the resumable state in last.pt."""
