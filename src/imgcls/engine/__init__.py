"""The training loop, evaluation, checkpoints and evaluation reports."""
