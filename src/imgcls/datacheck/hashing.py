"""Image fingerprints for the duplicate search, and a grouping that avoids comparing all pairs.

* exact: blake2b of the decoded RGB bytes plus the size, so a PNG and a lossless re-save of it
  match while two files that merely share a name do not;
* near: a 64-bit perceptual hash (pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32
  greyscale thumbnail against their median), which survives JPEG re-encoding, resizing and a few
  changed pixels; two images whose hashes differ in at most ``NEAR_THRESHOLD`` bits are near
  duplicates;
* file: blake2b of the file's bytes, the cheap check training runs at its start.

Near pairs are found with the pigeonhole trick: split the 64 bits into ``threshold + 1`` bands;
hashes within ``threshold`` bits agree on at least one whole band, so only hashes that share a
band value are compared (buckets of a few images on real data, not 50,000^2 / 2 pairs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

THUMB_SIDE = 32  # the greyscale thumbnail the DCT runs on
NEAR_THRESHOLD = 3  # default: at most 3 of 64 pHash bits differ -> near-duplicate (4 bands)
FLAT_RANGE = 2  # a thumbnail whose grey levels span <= this is one flat colour: no pHash


def pixel_hash(rgb: Image.Image) -> str:
    """Hex digest of the decoded RGB pixels and the size: equal only for identical images."""
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16)
    digest.update(f"{rgb.width}x{rgb.height}".encode())
    return digest.hexdigest()


def file_hash(path: str) -> str:
    """Hex digest of a file's bytes: cheaper than decoding, exact copies only."""
    with open(path, "rb") as handle:
        return hashlib.blake2b(handle.read(), digest_size=16).hexdigest()


def grey_thumbnail(rgb: Image.Image) -> np.ndarray:
    """The ``THUMB_SIDE`` x ``THUMB_SIDE`` uint8 greyscale thumbnail a pHash is computed from."""
    grey = rgb.convert("L")
    if grey.size != (THUMB_SIDE, THUMB_SIDE):
        # Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
        grey = grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


_LOW = _dct_matrix(THUMB_SIDE)[:8]  # the 8 lowest frequencies of the orthonormal DCT-II


def phashes(thumbs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """pHashes (uint64) of ``thumbs`` (N x 32 x 32 uint8), in chunks to bound the float copy.

    >>> int(phashes(np.zeros((1, 32, 32), np.uint8))[0])
    0
    """
    out = np.zeros(len(thumbs), dtype=np.uint64)
    weights = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)
    for start in range(0, len(thumbs), chunk):
        block = thumbs[start : start + chunk].astype(np.float32)
        coeffs = (_LOW @ block @ _LOW.T).reshape(len(block), 64)
        # The DC term (overall brightness) is left out of the median, as in the usual pHash.
        median = np.median(coeffs[:, 1:], axis=1, keepdims=True)
        bits = (coeffs > median).astype(np.uint64)
        out[start : start + len(block)] = (bits * weights).sum(axis=1, dtype=np.uint64)
    return out


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bits that differ between 64-bit hashes (elementwise)."""
    return np.bitwise_count(np.bitwise_xor(np.uint64(a), np.asarray(b, dtype=np.uint64)))


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving); ``labels()`` gives each item's root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def labels(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


def _bands(threshold: int) -> Iterable[tuple[int, int]]:
    """(shift, width) of ``threshold + 1`` contiguous bands covering the 64 bits."""
    edges = np.linspace(0, 64, threshold + 2).astype(int)
    return [(int(lo), int(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def near_pairs(hashes: np.ndarray, threshold: int = NEAR_THRESHOLD) -> UnionFind:
    """Union of every pair of ``hashes`` within ``threshold`` bits, found band by band.

    >>> uf = near_pairs(np.array([0, 1, 2**40 + 2**20, 7], dtype=np.uint64), threshold=1)
    >>> uf.labels()
    [0, 0, 2, 3]
    """
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold must be in 0..63, got {threshold}")
    sets = UnionFind(len(hashes))
    for shift, width in _bands(threshold):
        values = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for lo, hi in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            members = order[lo:hi]
            group = hashes[members]
            for i in range(len(members) - 1):
                close = hamming(group[i], group[i + 1 :]) <= threshold
                for j in members[i + 1 :][close]:
                    sets.union(int(members[i]), int(j))
    return sets
