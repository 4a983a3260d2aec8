"""Training: the one loop, tasks, losses, optimisers, top-k epochs, run logs, DDP and hyper-parameter tuning."""
