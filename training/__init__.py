"""Training side of starrating: data, the DDP/AMP training loop, evaluation, archiving."""
