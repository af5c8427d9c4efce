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


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finalizer on int64 tensors (bitwise identical to the uint64 version)."""
    x = (x ^ _srl(x, 30)) * _signed(_M1)
    x = (x ^ _srl(x, 27)) * _signed(_M2)
    return x ^ _srl(x, 31)


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
    seeds = seeds.to(torch.int64)
    skey = _signed(mix64_int(stream ^ 0x5851F42D4C957F2D))
    keys = mix64(mix64(seeds) ^ skey)  # [N]
    count = math.prod(shape)
    ctr = (torch.arange(count, dtype=torch.int64, device=seeds.device) + 1) * _signed(_GAMMA)
    return mix64(keys.view(-1, 1) + ctr.view(1, -1)).view(seeds.shape[0], *shape)


def keyed_uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform float32 in [0, 1) of shape [N, *shape], keyed like ``keyed_bits``.

    The top 24 bits become the float, so every value is exact in float32 (device-independent).
    """
    bits = _srl(keyed_bits(seeds, stream, shape), 40)
    return bits.to(torch.float32) * (1.0 / (1 << 24))


def keyed_permutation(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` per image: long [N, n].

    Argsort of 64-bit keys (stable, so the astronomically rare tie is still broken by index).
    """
    return torch.argsort(keyed_bits(seeds, stream, (n,)), dim=1, stable=True)
