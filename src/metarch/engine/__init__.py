"""Training engine: configs, checkpoints, the training loop, evaluation, distributed runs."""
