"""losscli: compare PyTorch loss functions empirically on small standard training jobs."""

from losscli import threads

# the CPU-thread governor's first look at the machine then covers importing torch
threads.note_start()

__version__ = "0.1.0"

__all__ = ["__version__", "compare", "load_runs"]


def __getattr__(name: str):
    """``losscli.compare`` and ``losscli.load_runs`` (``losscli.api``), imported on first use:
    ``import losscli`` stays free of torch."""
    if name in ("compare", "load_runs"):
        from losscli import api

        return getattr(api, name)
    raise AttributeError(f"module 'losscli' has no attribute {name!r}")
