"""Datasets: find, validate and hash images (``load_dataset``; ``open_dataset`` reuses an earlier
validation), then stream them as batches (``iter_batches``).

- ``loading``: layouts, validation at load, masks, the content hash, the validation index, ``Dataset``.
- ``images``: the pixel conventions (colour, alpha, resizing, masks) and one-file decoding.
- ``batches``: background-decoded batches of tensors.
"""

from etm.datasets.batches import Batch, decode_batch, iter_batches
from etm.datasets.loading import Dataset, Item, Skipped, content_sha256, load_dataset, open_dataset

__all__ = [
    "Batch",
    "Dataset",
    "Item",
    "Skipped",
    "content_sha256",
    "decode_batch",
    "iter_batches",
    "load_dataset",
    "open_dataset",
]
