"""Near-duplicates: MinHash LSH over word shingles, with exact verification. Pure, no I/O.

An example's **shingles** are its normalized words (`normalize_text`: casefolded, NFKC, punctuation removed) and its
runs of 2 .. `ngrams` consecutive words, each hashed to 32 bits (crc32, so the same in every process). Words alone
ignore word order; the pairs make a swap of two words cost little while a template filled with other values (another
task, day and priority) stays apart. Two examples are **near-duplicates** when the Jaccard similarity of their
shingle sets is at least the threshold (`[validate] near_dedupe`, 0.8 by default).

**MinHash LSH** finds the candidates: a signature of NUM_PERM minimum hashes (multiply-shift hashing of the shingle
hashes, seeded), cut into bands of rows chosen for the threshold so that a pair at the threshold shares a band with
a probability of at least 0.99. Every candidate is then **verified exactly** on the shingle sets, so a verdict never
rests on an estimate: LSH can only miss a pair (rarely), never invent one.

`NearIndex` holds the examples kept so far, in the order they were added, and answers which of them an example
nearly repeats (the first added, among those similar enough). A band bucket holds at most BUCKET_CAP examples (the
first added): in data so uniform that many kept examples share a band, an example is compared with the
first of them only, which bounds the work per example and may miss a near-duplicate there. Its state is a function
of what was added and in which order, so a caller that rebuilds it from the same examples in the same order gets
the same verdicts.
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from batchgen.dataset.validate import normalize_text

NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8
DEFAULT_NGRAMS = 2
_SEED = 20_261_206
_MASK32 = 0xFFFFFFFF
_WORD_CACHE_LIMIT = 1 << 18
BUCKET_CAP = 4


def _permutations(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd 64-bit multipliers and 64-bit offsets of the multiply-shift hash functions, the same in every process."""
    rng = np.random.default_rng(_SEED)
    a = rng.integers(0, 1 << 63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=count, dtype=np.uint64)
    return a, b


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads the 32-bit shingle hashes over 64 bits before the permutations."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


_A, _B = _permutations(NUM_PERM)
_words: dict[str, int] = {}


def _word_hash(word: str) -> int:
    found = _words.get(word)
    if found is None:
        if len(_words) >= _WORD_CACHE_LIMIT:
            _words.clear()
        found = _words[word] = zlib.crc32(word.encode())
    return found


def shingles(texts: Iterable[str], ngrams: int = DEFAULT_NGRAMS) -> frozenset[int]:
    """The 32-bit shingle hashes of some texts (an example's turns): words, then runs of up to `ngrams` words."""
    hashes = [_word_hash(w) for w in normalize_text(" ".join(texts)).split()]
    found = set(hashes)
    run = hashes
    for _ in range(1, ngrams):
        run = [((x * 0x9E3779B1) ^ y) & _MASK32
               for x, y in zip(run[:-1], hashes[len(hashes) - len(run) + 1:], strict=True)]
        found.update(run)
    return frozenset(found)


def signature(shingle_set: frozenset[int]) -> np.ndarray:
    """The MinHash signature (NUM_PERM uint32) of a shingle set; an empty set gets the all-ones signature."""
    if not shingle_set:
        return np.full(NUM_PERM, _MASK32, dtype=np.uint32)
    x = _mix(np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set)))
    hashed = (x[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)  # arithmetic modulo 2**64
    mins: np.ndarray = hashed.min(axis=0).astype(np.uint32)
    return mins


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for a threshold: the most rows (fewest candidates) such that a pair at the threshold shares a
    band with a probability of at least 0.99."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands and 1 - (1 - threshold ** rows) ** bands >= 0.99:
            best = (bands, rows)
    return best


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


@dataclass(frozen=True)
class Match:
    """What an example nearly repeats: the key of the kept example and their exact similarity."""

    key: str
    similarity: float


class NearIndex:
    """The examples kept so far (see the module docstring); `find` then `add` one example at a time."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ngrams: int = DEFAULT_NGRAMS) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], not {threshold}")
        self.threshold, self.ngrams = threshold, ngrams
        self.bands, self.rows = bands_for(threshold)
        # band key -> the rank of its one member, or the list of its members: most buckets hold one example
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._keys: list[str] = []
        self._sets: list[array[int]] = []  # each kept example's shingles as uint32: a tenth of a set's memory

    def __len__(self) -> int:
        return len(self._keys)

    def _band_keys(self, sig: np.ndarray) -> Iterator[int]:
        raw, width = sig.tobytes(), 4 * self.rows
        return (int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(self.bands))

    def find(self, shingle_set: frozenset[int], sig: np.ndarray | None = None) -> Match | None:
        """The first kept example this one nearly repeats, or None."""
        sig = signature(shingle_set) if sig is None else sig
        found: set[int] = set()
        for bucket, key in zip(self._buckets, self._band_keys(sig), strict=True):
            members = bucket.get(key)
            if members is not None:
                if isinstance(members, int):
                    found.add(members)
                else:
                    found.update(members)
        size, threshold, sets = len(shingle_set), self.threshold, self._sets
        for rank in sorted(found):
            other = sets[rank]
            # |A n B| / |A u B| >= t needs t * max(|A|, |B|) <= min(|A|, |B|): most candidates end here, uncounted
            if threshold * max(size, len(other)) > min(size, len(other)):
                continue
            common = len(shingle_set.intersection(other))
            union = size + len(other) - common
            similarity = common / union if union else 1.0
            if similarity >= threshold:
                return Match(self._keys[rank], similarity)
        return None

    def admit(self, key: str, shingle_set: frozenset[int]) -> Match | None:
        """What the example nearly repeats; when nothing, it is kept (added) and None is returned."""
        sig = signature(shingle_set)
        match = self.find(shingle_set, sig)
        if match is None:
            self.add(key, shingle_set, sig)
        return match

    def add(self, key: str, shingle_set: frozenset[int], sig: np.ndarray | None = None) -> None:
        """Keep an example: later ones are compared with it."""
        sig = signature(shingle_set) if sig is None else sig
        rank = len(self._keys)
        self._keys.append(key)
        self._sets.append(array("I", shingle_set))
        for bucket, band in zip(self._buckets, self._band_keys(sig), strict=True):
            members = bucket.get(band)
            if members is None:
                bucket[band] = rank
            elif isinstance(members, int):
                bucket[band] = [members, rank]
            elif len(members) < BUCKET_CAP:
                members.append(rank)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that LSH offers a pair of this similarity as a candidate."""
    return 1 - (1 - similarity ** rows) ** bands


def rounded(value: float) -> str:
    """A similarity as reasons show it (two decimals, rounded down, so 0.7999 never reads 0.80)."""
    return f"{math.floor(value * 100) / 100:.2f}"


__all__ = ["BUCKET_CAP", "DEFAULT_NGRAMS", "DEFAULT_THRESHOLD", "Match", "NUM_PERM", "NearIndex", "bands_for",
           "candidate_probability", "jaccard", "rounded", "shingles", "signature"]
