"""De-duplication filters: they need every row, so they work in two steps.

1. `keys(rows)` runs in the parallel, batched pass (datasets.map) and returns fixed-size numeric columns
   (a 64-bit hash of each normalised field; MinHash signatures and LSH band hashes).
2. `select(keys, alive)` runs once over all rows (numpy, vectorised) and returns, for each row, the index of
   the earlier row it duplicates (-1 if none). The first occurrence is kept.

MinHash follows datasketch exactly (scheme 'affine32': MurmurHash3 finaliser, then h -> a*h + b mod 2^32 with
datasketch's seeded permutations), and the band layout is the one datasketch's MinHashLSH picks for the
threshold; only the index differs: sorted numpy arrays instead of Python dicts of band keys, which keep 1M
rows in about 300 MB instead of several GB (see docs/curate.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xxhash

from gpt4all.curate.filters import Row, normalize

U64 = np.uint64
_P = U64(0x100000001B3)          # FNV prime: word hash multiplier
_Q = U64(0x9E3779B97F4A7C15)     # golden ratio: shingle / band combiner
FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


class GlobalFilter:
    """A filter that decides with every row in view; see the module docstring."""

    name = "global"
    reason = "duplicate"

    def keys(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def empty_keys(self, n: int) -> dict[str, np.ndarray]:
        """Placeholder keys for rows already dropped (never looked at by select)."""
        raise NotImplementedError

    def select(self, keys: dict[str, np.ndarray], alive: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _text(row: Row, fields: Iterable[str]) -> str:
    return "\n".join(str(row.get(f) or "") for f in fields)


class ExactDedupFilter(GlobalFilter):
    """Rows whose every field (default prompt and response) matches an earlier row's after lower-casing and
    collapsing whitespace. Each field is normalised and hashed on its own (one 64-bit xxh3 per field), so
    ("a b", "c") and ("a", "b c") differ."""

    name = "exact_dedup"
    reason = "exact_duplicate"

    def __init__(self, fields: Sequence[str] = ("prompt", "response")):
        self.fields = list(fields)
        if not self.fields:
            raise ValueError("exact_dedup needs at least one field")

    def keys(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        hashes = [[xxhash.xxh3_64_intdigest(normalize(str(r.get(f) or "")).encode()) for f in self.fields]
                  for r in rows]
        return {"hash": np.array(hashes, U64).reshape(len(rows), len(self.fields))}

    def empty_keys(self, n: int) -> dict[str, np.ndarray]:
        return {"hash": np.zeros((n, len(self.fields)), U64)}

    def select(self, keys: dict[str, np.ndarray], alive: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(alive)
        dup_of = np.full(len(alive), -1, np.int64)
        hashes = np.asarray(keys["hash"], U64).reshape(len(alive), -1)[idx]
        _, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
        rep = idx[first][inverse.reshape(-1)]
        dup = rep != idx
        dup_of[idx[dup]] = rep[dup]
        return dup_of


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = FMIX32
    h = h ^ (h >> np.uint32(s1))
    h = h * np.uint32(m1)
    h = h ^ (h >> np.uint32(s2))
    h = h * np.uint32(m2)
    return h ^ (h >> np.uint32(s3))


_WORD_BYTE = np.zeros(256, bool)
_WORD_BYTE[[*range(48, 58), *range(97, 123), 95, *range(128, 256)]] = True  # [0-9a-z_] and non-ASCII


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words of each lower-cased text ([0-9a-z_] runs, non-ASCII letters included), hashed to uint64 in one
    vectorised pass over the bytes. Returns (hashes of all words, concatenated; word count of each text).
    """
    joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:
        joined = "\x00".join(t.replace("\x00", " ") for t in texts)
    data = np.frombuffer(joined.lower().encode("utf-8", "replace"), np.uint8)
    isw = _WORD_BYTE[data]
    edges = np.diff(np.r_[False, isw, False].astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    doc = np.searchsorted(np.flatnonzero(data == 0), starts)
    counts = np.bincount(doc, minlength=len(texts))
    if len(starts) == 0:
        return np.zeros(0, U64), counts
    lengths = ends - starts
    wb = data[isw].astype(U64)
    cstarts = np.r_[0, np.cumsum(lengths)[:-1]]
    pos = np.arange(len(wb)) - np.repeat(cstarts, lengths)
    with np.errstate(over="ignore"):
        powers = np.concatenate([[U64(1)], np.cumprod(np.full(int(lengths.max()) - 1, _P, U64))])
        h = np.add.reduceat(wb * powers[pos], cstarts) + lengths.astype(U64)
    return h, counts


def shingle_hashes(word_h: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of word n-grams inside each text (a text shorter than n is one shingle).

    Returns (shingle hashes, concatenated; shingle count of each text).
    """
    n = len(word_h)
    ends = np.repeat(np.cumsum(counts), counts)           # for each word: end index of its text
    starts = ends - np.repeat(counts, counts)
    pos = np.arange(n)
    padded = np.concatenate([word_h, np.zeros(ngram, U64)])
    s = np.zeros(n, U64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            s = s * _Q + np.where(pos + j < ends, padded[j:j + n], U64(0))
    valid = (pos + ngram <= ends) | ((ends - starts < ngram) & (pos == starts))
    s = s[valid]
    per_text = np.minimum(np.maximum(counts - ngram + 1, 1), counts)
    return ((s ^ (s >> U64(32))) & U64(0xFFFFFFFF)).astype(np.uint32), per_text


def minhash_signatures(shingles: np.ndarray, per_text: np.ndarray, a: np.ndarray, b: np.ndarray,
                       chunk: int = 65536) -> np.ndarray:
    """datasketch 'affine32' MinHash of each text's shingle set: (n_texts, num_perm) uint32; empty -> max."""
    sig = np.full((len(per_text), len(a)), np.iinfo(np.uint32).max, np.uint32)
    has = per_text > 0
    if not has.any():
        return sig
    mixed = _fmix32(shingles)
    doc = np.repeat(np.flatnonzero(has), per_text[has])
    with np.errstate(over="ignore"):
        for lo in range(0, len(mixed), chunk):  # bounded temporaries: chunk x num_perm uint32
            ph = mixed[lo:lo + chunk, None] * a[None, :] + b[None, :]
            d = doc[lo:lo + chunk]
            bounds = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            sig[d[bounds]] = np.minimum(sig[d[bounds]], np.minimum.reduceat(ph, bounds, axis=0))
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per LSH band: rows consecutive signature values combined."""
    out = np.zeros((len(sig), bands), U64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            out = out * _Q + sig[:, j:bands * rows:rows].astype(U64) + U64(1)
    return out


def connected_min(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest row index of each row's connected component over the edges (a, b); vectorised label spread."""
    label = np.arange(n)
    while True:
        m = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        label = label[label]  # pointer jumping
        if np.array_equal(label, before):
            return label


class NearDedupFilter(GlobalFilter):
    """Near-duplicates by MinHash LSH over word n-gram shingles, confirmed by estimated Jaccard.

    In each band, the rows that share a band hash form a bucket; each member is compared with the bucket's
    first row only (not with every other member) and joined to it when their signatures agree on at least
    `confirm_at` of their values: `threshold` less `confirm_z` standard errors of the MinHash estimate at the
    threshold (sqrt(t (1 - t) / num_perm)), so a pair truly at the threshold is not lost to estimation noise
    (`confirm_z=0` confirms at the threshold itself). Joined rows form connected groups across bands; each
    group keeps its first row.
    """

    name = "near_dedup"
    reason = "near_duplicate"

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, ngram: int = 5, seed: int = 1,
                 fields: Sequence[str] = ("prompt", "response"), lsh_weights: Sequence[float] = (0.1, 0.9),
                 confirm_z: float = 0.0):
        from datasketch import MinHash, MinHashLSH

        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        if confirm_z < 0:
            raise ValueError(f"confirm_z must be >= 0, got {confirm_z}")
        self.fields = list(fields)
        self.confirm_at = threshold - confirm_z * float(np.sqrt(threshold * (1 - threshold) / num_perm))
        # candidates are confirmed by estimated Jaccard, so the bands favour recall (false-negative weight 0.9)
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=tuple(lsh_weights))
        self.bands, self.rows = lsh.b, lsh.r
        self.a, self.b = (np.asarray(p, np.uint32) for p in MinHash(num_perm, seed=seed, scheme="affine32").permutations)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        sh, per_text = shingle_hashes(*word_hashes(texts), self.ngram)
        return minhash_signatures(sh, per_text, self.a, self.b), per_text

    def keys(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        sig, per_text = self.signatures([_text(r, self.fields) for r in rows])
        return {"sig": sig, "bands": band_hashes(sig, self.bands, self.rows), "n": per_text.astype(np.int32)}

    def empty_keys(self, n: int) -> dict[str, np.ndarray]:
        return {"sig": np.zeros((n, self.num_perm), np.uint32), "bands": np.zeros((n, self.bands), U64),
                "n": np.zeros(n, np.int32)}

    def select(self, keys: dict[str, np.ndarray], alive: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(alive & (keys["n"] > 0))
        sig, bands = keys["sig"], keys["bands"]
        edges_a, edges_b = [], []
        for j in range(self.bands):
            col = bands[idx, j]
            order = np.argsort(col, kind="stable")
            sc = col[order]
            new = np.r_[True, sc[1:] != sc[:-1]]
            group_first = np.maximum.accumulate(np.where(new, np.arange(len(sc)), 0))
            members = np.flatnonzero(~new)
            rep, mem = idx[order[group_first[members]]], idx[order[members]]
            sim = (sig[rep] == sig[mem]).mean(axis=1) if len(rep) else np.zeros(0)
            ok = sim >= self.confirm_at
            edges_a.append(rep[ok])
            edges_b.append(mem[ok])
        dup_of = np.full(len(alive), -1, np.int64)
        a, b = np.concatenate(edges_a), np.concatenate(edges_b)
        if len(a):
            nodes, inv = np.unique(np.r_[a, b], return_inverse=True)
            label = nodes[connected_min(len(nodes), inv[:len(a)], inv[len(a):])]
            dup = label != nodes
            dup_of[nodes[dup]] = label[dup]
        return dup_of
