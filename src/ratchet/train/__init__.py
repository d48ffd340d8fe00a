"""Pure PyTorch training core: models, the loop, continual-learning strategies and their state."""
