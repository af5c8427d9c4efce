"""Streaming a dataset as batches of tensors, decoded ahead of the model on background threads."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from etm.datasets.images import decode_image, decode_mask
from etm.datasets.loading import Dataset
from etm.errors import DatasetError


@dataclass
class Batch:
    """A batch of images in the order of the ``indices`` asked for.

    Attributes:
        indices: Positions in ``dataset.items``.
        keys: The items' keys (relative paths).
        labels: The items' class names.
        images: float32 [N, 3, H, W], RGB in [0, 1] (see ``images`` for the conventions).
        masks: float32 [N, H, W] in [0, 1]; all zeros where an item has no mask.
        has_mask: bool [N].
    """

    indices: list[int]
    keys: list[str]
    labels: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    has_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, start: int, stop: int) -> Batch:
        """Items ``start:stop`` as a batch of their own (views, no copy): for retrying a smaller batch."""
        return Batch(
            indices=self.indices[start:stop],
            keys=self.keys[start:stop],
            labels=self.labels[start:stop],
            images=self.images[start:stop],
            masks=self.masks[start:stop],
            has_mask=self.has_mask[start:stop],
        )


def iter_batches(
    dataset: Dataset,
    indices: Sequence[int] | range,
    batch_size: int,
    size: tuple[int, int],
    *,
    prefetch: int = 2,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Yield the dataset's items as batches, decoding the next ones while the caller works.

    The images of the next ``prefetch`` batches are decoded on a pool of ``workers`` threads
    (PIL releases the GIL while decoding and resizing, so they run in parallel), oldest batch
    first. Memory stays at ``prefetch + 1`` batches (the one the caller holds and those being
    decoded) whatever the dataset's size. Closing the iterator early (``break``) cancels the
    queued decodes and waits for the running ones.

    Args:
        dataset: A loaded dataset.
        indices: Positions in ``dataset.items``, in the order wanted (repeats allowed).
        batch_size: Images per batch (the last batch may be smaller).
        size: Output ``(height, width)`` of images and masks.
        prefetch: Batches decoded ahead, >= 1.
        workers: Decoding threads; None means ``min(8, cpu count)``.

    Yields:
        Batches, in the order of ``indices``.

    Raises:
        ValueError: A bad argument (index out of range, batch_size or size not positive).
        DatasetError: Before the first batch, when an item rebuilt from a validation index fails
            ``Dataset.verify`` (only the items of ``indices`` are checked); later, when a file fails
            to decode (it passed validation, so it changed since).
    """
    idx = [int(i) for i in indices]
    n = len(dataset.items)
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"indices out of range for a dataset of {n} images: {bad[:10]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive values, got {size}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    n_workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # Up front, so that a changed file fails the pass before any model work, and only this pass's files are read.
    dataset.verify(idx)
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    return _generate(dataset, chunks, (int(size[0]), int(size[1])), prefetch, n_workers)


def _generate(
    dataset: Dataset, chunks: list[list[int]], size: tuple[int, int], prefetch: int, workers: int
) -> Iterator[Batch]:
    # A separate generator so that argument errors raise at the call, not at the first next().
    if not chunks:
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etm-decode")
    pending: deque[_PendingBatch] = deque()
    try:
        upcoming = iter(chunks)
        for chunk in upcoming:
            pending.append(_PendingBatch(pool, dataset, chunk, size))
            if len(pending) == prefetch:
                break
        while pending:
            batch = pending.popleft().result()
            # Queue the next one only now: while the caller holds this batch, at most `prefetch`
            # others exist.
            chunk = next(upcoming, None)
            if chunk is not None:
                pending.append(_PendingBatch(pool, dataset, chunk, size))
            yield batch
    finally:
        for p in pending:
            p.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _PendingBatch:
    """A batch whose images are being decoded on a pool (or, without one, right away), each
    straight into its slot of the batch arrays."""

    def __init__(self, pool: Executor | None, dataset: Dataset, indices: Sequence[int], size: tuple[int, int]) -> None:
        height, width = size
        self.indices = list(indices)
        self.items = [dataset.items[i] for i in self.indices]
        self.size = size
        self.images = np.empty((len(self.items), 3, height, width), dtype=np.float32)
        self.masks = np.zeros((len(self.items), height, width), dtype=np.float32)
        self.has_mask = np.array([it.mask_path is not None for it in self.items], dtype=bool)
        self.futures: list[Future[None]] = []
        for j in range(len(self.items)):
            if pool is None:
                self._fill(j)
            else:
                self.futures.append(pool.submit(self._fill, j))

    def _fill(self, j: int) -> None:
        item = self.items[j]
        self.images[j] = _decode("image", decode_image, item.path, item.key, self.size)
        if item.mask_path is not None:
            self.masks[j] = _decode("mask", decode_mask, item.mask_path, item.key, self.size)

    def cancel(self) -> None:
        for fut in self.futures:
            fut.cancel()

    def result(self) -> Batch:
        try:
            for fut in self.futures:
                fut.result()
        except BaseException:
            self.cancel()
            raise
        return Batch(
            indices=self.indices,
            keys=[it.key for it in self.items],
            labels=[it.label for it in self.items],
            images=torch.from_numpy(self.images),
            masks=torch.from_numpy(self.masks),
            has_mask=torch.from_numpy(self.has_mask),
        )


def decode_batch(dataset: Dataset, indices: Sequence[int], size: tuple[int, int]) -> Batch:
    """Decode some items into one batch, on the calling thread.

    Args:
        dataset: A loaded dataset.
        indices: Positions in ``dataset.items``.
        size: Output ``(height, width)``.

    Returns:
        The batch.

    Raises:
        DatasetError: A file fails ``Dataset.verify`` or to decode.
    """
    dataset.verify(indices)
    return _PendingBatch(None, dataset, indices, size).result()


def _decode(
    what: str, fn: Callable[[Path, tuple[int, int]], np.ndarray], path: Path, key: str, size: tuple[int, int]
) -> np.ndarray:
    try:
        return fn(path, size)
    except Exception as e:  # noqa: BLE001 - any decode failure means the same thing here
        raise DatasetError(
            f"{what} {path} (item {key}) could not be decoded: {type(e).__name__}: {e}. "
            "It passed validation when the dataset was loaded, so it has probably "
            "changed since; reload the dataset"
        ) from e
