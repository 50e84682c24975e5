"""The torch side: data loading and augmentation, models, the training loop, DDP, checkpoints, evaluation."""
