"""ratchet: continual retraining of PyTorch image classifiers with a forgetting-aware promotion gate."""

__version__ = "0.1.0"
