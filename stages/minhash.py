"""Exact and near-duplicate detection over a stream of texts, keep-first-occurrence (MinHash + LSH).

`DedupIndex.check(text, scope)` says whether a text duplicates one already added; `add` records it and
returns the `Entry` to keep (the filter stores it per shard, so a later run loads the index back without
reading any pair or recomputing any signature). Signatures are MinHash over word shingles
(datasketch's scheme: (a*h + b) mod 2^61-1 over 64-bit shingle hashes, numpy-vectorised) with banded
LSH to find candidates; a candidate is a near duplicate when the estimated Jaccard similarity reaches
the threshold. Hashes are stable across processes (blake2b, fixed seed), so decisions do not depend on
which run saw which shard.

Memory is about 0.95 KB per kept text, in flat numpy arrays: its signature (128 x uint32), its 32 band
hashes and its exact-text hash (uint64 each, with the int32 row they point to) and its key (32 bytes),
plus at most a quarter of that as room to grow. New entries go to a small dict (a bounded 4,096) and then
into sorted runs merged like a binary counter, so adding is amortised O(log n) and no Python object is
kept per entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stages.textsim import normalise

_PRIME = np.uint64((1 << 61) - 1)
_MAX = np.uint64((1 << 32) - 1)
_MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 constants


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


@dataclass
class Match:
    reason: str  # duplicate | near_duplicate
    of: str  # the key (pair id) of the first occurrence
    jaccard: float


@dataclass
class Entry:
    """What the index keeps of one text: enough to load it back (filter's per-shard dedup state)."""

    key: str
    exact: int  # hash of scope + normalised text
    scope: str
    signature: np.ndarray | None  # None when near-duplicate detection is off (threshold 1)


class _U64Multimap:
    """uint64 -> row numbers, 12 bytes an entry: sorted numpy runs (merged like a binary counter, so there are
    about log2(n / PENDING) of them and adding is amortised O(log n)) plus a small dict of recent additions."""

    PENDING = 4096  # entries kept in the dict (~120 bytes each) before they become a sorted run

    def __init__(self):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys uint64, rows int32), sorted by key then row
        self.pending: dict[int, list[int]] = {}
        self.n_pending = 0

    def get(self, key: int) -> list[int]:
        return self.get_many(np.array([key], dtype=np.uint64))

    def get_many(self, keys: np.ndarray) -> list[int]:
        """Every row stored under any of `keys` (uint64 array)."""
        out: list[int] = []
        for run_keys, rows in self.runs:
            lo, hi = np.searchsorted(run_keys, keys, "left"), np.searchsorted(run_keys, keys, "right")
            for a, b in zip(lo[hi > lo].tolist(), hi[hi > lo].tolist()):
                out += rows[a:b].tolist()
        if self.pending:
            for k in keys.tolist():
                out += self.pending.get(k, [])
        return out

    def add(self, key: int, row: int) -> None:
        self.pending.setdefault(key, []).append(row)
        self.n_pending += 1
        if self.n_pending >= self.PENDING:
            self._flush()

    def _flush(self) -> None:
        ks = np.fromiter((k for k, rs in self.pending.items() for _ in rs), dtype=np.uint64, count=self.n_pending)
        rs = np.fromiter((r for v in self.pending.values() for r in v), dtype=np.int32, count=self.n_pending)
        self.pending, self.n_pending = {}, 0
        self.runs.append(_sorted(ks, rs))
        while len(self.runs) > 1 and len(self.runs[-1][0]) * 2 >= len(self.runs[-2][0]):
            (k2, r2), (k1, r1) = self.runs.pop(), self.runs.pop()
            self.runs.append(_sorted(np.concatenate([k1, k2]), np.concatenate([r1, r2])))

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + r.nbytes for k, r in self.runs) + 120 * self.n_pending


def _sorted(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, keys))  # by key, then row: the earliest row first
    return keys[order], rows[order]


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
        self.exact = _U64Multimap()  # exact-text hash -> row
        self.buckets = _U64Multimap()  # band hash -> rows
        self._sigs = np.zeros((64, num_perm), dtype=np.uint32)  # row i: signature of key i
        self._keys = np.zeros(64, dtype="S32")
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def near(self) -> bool:
        return 0 < self.threshold < 1.0

    @property
    def nbytes(self) -> int:
        """Memory held for the entries (for the benchmark's bytes-per-pair figure)."""
        return self._sigs.nbytes + self._keys.nbytes + self.exact.nbytes + self.buckets.nbytes  # allocated, slack too

    def signature(self, text: str) -> np.ndarray:
        ws = normalise(text).split()
        n = self.shingle
        grams = {" ".join(ws[i : i + n]) for i in range(max(1, len(ws) - n + 1))}
        hv = np.fromiter((_h64(g) for g in grams), dtype=np.uint64, count=len(grams))
        with np.errstate(over="ignore"):  # uint64 wrap-around is part of the scheme
            ph = (np.outer(hv, self._a) + self._b) % _PRIME & _MAX
        return ph.min(axis=0).astype(np.uint32)  # values fit 32 bits: half the memory per kept pair

    def exact_hash(self, text: str, scope: str) -> int:
        return _h64(f"{scope}\0{normalise(text)}")

    def _band_hashes(self, sig: np.ndarray, scope: str) -> np.ndarray:
        """One 64-bit hash per LSH band (scope, band number and its values mixed, vectorised). A collision
        only adds a candidate, which the signature comparison then rejects."""
        v = sig.reshape(self.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = np.uint64(_h64(scope)) ^ (np.arange(self.bands, dtype=np.uint64) * _MIX1)
            for j in range(self.rows):
                h = (h ^ v[:, j]) * _MIX2
                h ^= h >> np.uint64(29)
        return h

    def check(self, text: str, scope: str = "") -> tuple[Match | None, np.ndarray | None]:
        """(match or None, signature to pass to `add`)."""
        first = self.exact.get(self.exact_hash(text, scope))
        if first:
            return Match("duplicate", self._key(min(first)), 1.0), None
        if not self.near:
            return None, None
        sig = self.signature(text)
        cands = set(self.buckets.get_many(self._band_hashes(sig, scope)))
        if cands:
            idx = np.array(sorted(cands), dtype=np.int64)  # ties go to the earliest pair
            sims = (self._sigs[idx] == sig).mean(axis=1)
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold:
                return Match("near_duplicate", self._key(int(idx[best])), round(float(sims[best]), 4)), sig
        return None, sig

    def add(self, text: str, key: str, scope: str = "", sig: np.ndarray | None = None) -> Entry:
        if self.near and sig is None:
            sig = self.signature(text)
        entry = Entry(key, self.exact_hash(text, scope), scope, sig if self.near else None)
        self.load(entry)
        return entry

    def load(self, entry: Entry) -> None:
        """Add an entry made by `add` (in this run or stored by an earlier one)."""
        row = self.n
        if row == len(self._keys):  # grow by a quarter: amortised O(1), at most 25% unused
            more = max(64, len(self._keys) // 4)
            self._keys = np.concatenate([self._keys, np.zeros(more, dtype=self._keys.dtype)])
            if self.near:
                self._sigs = np.concatenate([self._sigs, np.zeros((more, self.num_perm), dtype=np.uint32)])
        self._keys[row] = entry.key.encode()
        self.n += 1
        self.exact.add(entry.exact, row)
        if self.near and entry.signature is not None:
            self._sigs[row] = entry.signature
            for bh in self._band_hashes(entry.signature, entry.scope).tolist():
                self.buckets.add(bh, row)

    def _key(self, row: int) -> str:
        return self._keys[row].decode()
