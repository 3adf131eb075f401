"""losscli: compare PyTorch loss functions empirically on small standard training jobs."""

__version__ = "0.1.0"
