"""Exact and near-duplicate detection over a stream of texts, keep-first-occurrence (MinHash + LSH).

`DedupIndex.check(text, scope)` says whether a text duplicates one already added; `add` records it.
Signatures are MinHash over word shingles (datasketch's scheme: (a*h + b) mod 2^61-1 over 64-bit
shingle hashes, numpy-vectorised) with banded LSH to find candidates; a candidate is a near duplicate
when the estimated Jaccard similarity reaches the threshold. Hashes are stable across processes
(blake2b, fixed seed), so rebuilding the index from earlier output gives the same decisions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stages.textsim import normalise

_PRIME = np.uint64((1 << 61) - 1)
_MAX = np.uint64((1 << 32) - 1)


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


@dataclass
class Match:
    reason: str  # duplicate | near_duplicate
    of: str  # the key (pair id) of the first occurrence
    jaccard: float


class DedupIndex:
    def __init__(self, threshold: float = 0.9, num_perm: int = 128, bands: int = 32, shingle: int = 3, seed: int = 1):
        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        self.threshold = threshold
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.shingle = shingle
        rng = np.random.RandomState(seed)
        self._a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self._b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.exact: dict[bytes, str] = {}  # hash of scope + normalised text -> first key
        self.buckets: dict[tuple, list[int]] = {}
        self._sigs = np.zeros((64, num_perm), dtype=np.uint32)  # row i: signature of keys[i]; grows by doubling
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.keys)

    def signature(self, text: str) -> np.ndarray:
        ws = normalise(text).split()
        n = self.shingle
        grams = {" ".join(ws[i : i + n]) for i in range(max(1, len(ws) - n + 1))}
        hv = np.fromiter((_h64(g) for g in grams), dtype=np.uint64, count=len(grams))
        with np.errstate(over="ignore"):  # uint64 wrap-around is part of the scheme
            ph = (np.outer(hv, self._a) + self._b) % _PRIME & _MAX
        return ph.min(axis=0).astype(np.uint32)  # values fit 32 bits: half the memory per kept pair

    def _exact_key(self, text: str, scope: str) -> bytes:
        return hashlib.blake2b(f"{scope}\0{normalise(text)}".encode(), digest_size=16).digest()

    def _band_keys(self, sig: np.ndarray, scope: str) -> list[tuple]:
        r = self.rows
        return [(scope, b, sig[b * r : (b + 1) * r].tobytes()) for b in range(self.bands)]

    def check(self, text: str, scope: str = "") -> tuple[Match | None, np.ndarray | None]:
        """(match or None, signature to pass to `add`)."""
        first = self.exact.get(self._exact_key(text, scope))
        if first is not None:
            return Match("duplicate", first, 1.0), None
        if self.threshold >= 1.0 or self.threshold <= 0:
            return None, None
        sig = self.signature(text)
        cands: set[int] = set()
        for bk in self._band_keys(sig, scope):
            cands.update(self.buckets.get(bk, ()))
        if cands:
            idx = np.array(sorted(cands), dtype=np.int64)  # ties go to the earliest pair
            sims = (self._sigs[idx] == sig).mean(axis=1)
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold:
                return Match("near_duplicate", self.keys[idx[best]], round(float(sims[best]), 4)), sig
        return None, sig

    def add(self, text: str, key: str, scope: str = "", sig: np.ndarray | None = None) -> None:
        self.exact.setdefault(self._exact_key(text, scope), key)
        if self.threshold >= 1.0 or self.threshold <= 0:
            return
        if sig is None:
            sig = self.signature(text)
        idx = len(self.keys)
        self.keys.append(key)
        if idx == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[idx] = sig
        for bk in self._band_keys(sig, scope):
            self.buckets.setdefault(bk, []).append(idx)
