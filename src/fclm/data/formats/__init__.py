"""Dataset format readers; entry point: :func:`fclm.data.formats.registry.load_dataset`."""
from .registry import LOADERS, available_datasets, load_dataset

__all__ = ["LOADERS", "available_datasets", "load_dataset"]
