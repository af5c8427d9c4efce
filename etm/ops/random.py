"""Counter-based random numbers keyed by per-image seeds.

Every random draw of the service (noise, random deletion orders, ...) is a pure function of
``(image seed, stream, element index)``: SplitMix64 applied to ``key(seed, stream) + (i + 1) * gamma``.
So an image gets the same numbers whatever batch or shard it falls in and on CPU or GPU alike
(integer arithmetic only; the float conversion is exact).

Torch has no unsigned 64-bit arithmetic, so the hash runs on int64 tensors: multiplication and
addition wrap modulo 2**64 exactly as uint64 would (two's complement), and logical right shifts are
emulated by masking the sign-extended bits of the arithmetic shift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``mix64`` in place on ``x``, with ``tmp`` (same shape) as scratch: the same operations in the
    same order as ``mix64``, without the six temporaries (their page faults cost 3x the arithmetic)."""
    for shift, mult in ((30, _signed(_M1)), (27, _signed(_M2)), (31, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        tmp &= (1 << (64 - shift)) - 1  # logical shift: drop the sign-extended bits
        x ^= tmp
        if mult is not None:
            x *= mult
    return x


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finalizer on int64 tensors (bitwise identical to the uint64 version)."""
    x = x.to(torch.int64, copy=True)
    return _mix64_(x, torch.empty_like(x))


def mix64_int(x: int) -> int:
    """Pure-Python SplitMix64 finalizer on a uint64 (the reference for ``mix64``)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def stream_id(*parts: int | str) -> int:
    """A stable 63-bit stream id from names and indices, e.g. ``stream_id("oos.noise", 3)``.

    Uses BLAKE2b (not Python's salted ``hash``) so ids are equal across processes and machines.
    """
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def keyed_bits(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """64 random bits per element: int64 [N, *shape], a pure function of (seed, stream, index).

    Args:
        seeds: [N] int64 per-image seeds (any device; the result is on the same device).
        stream: which independent sequence to draw (see ``stream_id``).
        shape: the per-image shape.
    """
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D [N], got shape {tuple(seeds.shape)}")
    out = torch.empty((seeds.shape[0], math.prod(shape)), dtype=torch.int64, device=seeds.device)
    _keyed_blocks(seeds, stream, out, lambda block, bits: block.copy_(bits))
    return out.view(seeds.shape[0], *shape)


def keyed_uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform float32 in [0, 1) of shape [N, *shape], keyed like ``keyed_bits``.

    The top 24 bits become the float, so every value is exact in float32 (device-independent).
    """
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be 1-D [N], got shape {tuple(seeds.shape)}")

    def top24(block: torch.Tensor, bits: torch.Tensor) -> None:
        bits >>= 40
        bits &= (1 << 24) - 1  # = _srl(bits, 40)
        block.copy_(bits)  # exact: integers below 2**24
        block.mul_(1.0 / (1 << 24))

    out = torch.empty((seeds.shape[0], math.prod(shape)), dtype=torch.float32, device=seeds.device)
    _keyed_blocks(seeds, stream, out, top24)
    return out.view(seeds.shape[0], *shape)


# int64 elements hashed at once on the CPU: the block and its scratch (256 KiB each) stay in the
# L2 cache through the ~12 passes of the hash (4x faster than whole-batch tensors at 64 px).
_BLOCK = 1 << 15


def _keyed_blocks(
    seeds: torch.Tensor, stream: int, out: torch.Tensor, finish: Callable[[torch.Tensor, torch.Tensor], None]
) -> None:
    """Hash every element of ``out`` [N, count] (row n keyed by ``seeds[n]``, column i by its index)
    block by block, handing each block's bits to ``finish(out_block, bits)`` (which may modify bits).

    Element (n, i) is ``mix64(key_n + (i + 1) * gamma)``, computed with the same int64 operations as
    a whole-batch ``mix64`` would, so the blocking cannot change a bit.
    """
    seeds = seeds.to(torch.int64)
    skey = _signed(mix64_int(stream ^ 0x5851F42D4C957F2D))
    keys = mix64(mix64(seeds) ^ skey)  # [N]
    n, count = out.shape
    if n == 0 or count == 0:
        return
    ctr = (torch.arange(count, dtype=torch.int64, device=seeds.device) + 1) * _signed(_GAMMA)
    # On a GPU one block is the whole tensor: it has no small cache to stay in, and launches cost.
    block = n * count if seeds.device.type != "cpu" else _BLOCK
    rows = max(1, block // count)  # whole rows per block when rows are short
    cols = min(count, block)  # else column ranges of one row
    buf = torch.empty(2 * rows * cols, dtype=torch.int64, device=seeds.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        for c0 in range(0, count, cols):
            c1 = min(count, c0 + cols)
            shape = (r1 - r0, c1 - c0)
            size = shape[0] * shape[1]
            bits, tmp = buf[:size].view(shape), buf[size : 2 * size].view(shape)
            torch.add(keys[r0:r1].view(-1, 1), ctr[c0:c1].view(1, -1), out=bits)  # wraps like uint64
            finish(out[r0:r1, c0:c1], _mix64_(bits, tmp))


def keyed_permutation(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` per image: long [N, n].

    Argsort of 64-bit keys (stable, so the astronomically rare tie is still broken by index).
    """
    return torch.argsort(keyed_bits(seeds, stream, (n,)), dim=1, stable=True)
