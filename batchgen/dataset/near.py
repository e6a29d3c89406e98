"""Near-duplicates: MinHash LSH over word shingles, with exact verification. Pure, no I/O.

An example's **shingles** are its normalized words (`normalize_text`: casefolded, NFKC, punctuation removed) and its
runs of 2 .. `ngrams` consecutive words, each hashed to 32 bits (crc32, so the same in every process). Words alone
ignore word order; the pairs make a swap of two words cost little while a template filled with other values (another
task, day and priority) stays apart. Two examples are **near-duplicates** when the Jaccard similarity of their
shingle sets is at least the threshold (`[validate] near_dedupe`, 0.8 by default).

**MinHash LSH** finds the candidates: a signature of NUM_PERM minimum hashes (multiply-shift hashing of the shingle
hashes, seeded), cut into bands of rows chosen for the threshold so that a pair at the threshold shares a band with
a probability of at least 0.99 (at 0.8: 21 bands of 6 rows). NUM_PERM stays at 128 although 64 would halve the
hashing: with fewer bands (12 at 64), in templated data whose buckets fill up (see BUCKET_CAP below), a third of the
near-duplicates found at 128 were missed. A candidate whose signature agrees with the example's in fewer than
`agreement_floor` positions (compared on the low 16 bits of each minimum hash: a chance agreement only lets one more
candidate through) is dropped (a pair at the threshold is dropped so with a probability below 0.001); every
other one is then **verified exactly** on the shingle sets, so a verdict never rests on an estimate: the estimates
can only miss a pair (rarely), never invent one.

`NearIndex` holds the examples kept so far, in the order they were added, and answers which of them an example
nearly repeats (the first added, among those similar enough). A band bucket holds at most BUCKET_CAP examples (the
first added): in data so uniform that many kept examples share a band, an example is compared with the
first of them only, which bounds the work per example and may miss a near-duplicate there. Its state is a function
of what was added and in which order, so a caller that rebuilds it from the same examples in the same order gets
the same verdicts.

The work is done on many examples at once (`Shingled`, `NearIndex.add_all`, `NearIndex.admit_all`): their texts are
normalized in one pass, their shingles and signatures computed with numpy over all of them, and only the walk over
the band buckets runs once per example. One example at a time (`shingles`, `NearIndex.add`, `find`, `admit`) gives
the same results.
"""

from __future__ import annotations

import math
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from batchgen.dataset.validate import NOT_WORD

NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8
DEFAULT_NGRAMS = 2
BUCKET_CAP = 4
CHUNK = 4096  # examples normalized, shingled and signed at once
_SEED = 20_261_206
_MASK32 = np.uint64(0xFFFFFFFF)
_WORD_CACHE_LIMIT = 1 << 18
_HASHED_AT_ONCE = 1 << 13  # shingles hashed against every permutation at once: a matrix of 4 MB
_SEPARATOR = "\x1e"  # between examples' texts while they are normalized together (whitespace to normalize_text)
_END = "|"  # what the separator becomes: a word no text can have once normalized (punctuation is removed)
_ASCII = {c: None for c in range(128) if NOT_WORD.match(chr(c))}
_MISS_AT_FLOOR = 0.001


def _permutations(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd 64-bit multipliers and 64-bit offsets of the multiply-shift hash functions, the same in every process."""
    rng = np.random.default_rng(_SEED)
    a = rng.integers(0, 1 << 63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=count, dtype=np.uint64)
    return a, b


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads 64-bit values (the 32-bit shingle hashes, a band's rows) over 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


_A, _B = _permutations(NUM_PERM)


class _WordHashes(dict[str, int]):
    """The crc32 of every word met (kept up to _WORD_CACHE_LIMIT words); the end of an example's words is -1."""

    def __missing__(self, word: str) -> int:
        found = self[word] = -1 if word == _END else zlib.crc32(word.encode())
        return found


_words = _WordHashes()


@dataclass(frozen=True)
class Shingled:
    """The shingle sets of many examples, each sorted, one after another: example i's are
    values[offsets[i]:offsets[i + 1]] (uint32)."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def set(self, i: int) -> frozenset[int]:
        return frozenset(self.values[self.offsets[i]:self.offsets[i + 1]].tolist())

    def part(self, start: int, stop: int) -> Shingled:
        """Examples start .. stop - 1 (sharing this one's arrays)."""
        offsets = self.offsets[start:stop + 1]
        return Shingled(self.values[offsets[0]:offsets[-1]], offsets - offsets[0])

    @classmethod
    def of_sets(cls, sets: Sequence[frozenset[int]]) -> Shingled:
        offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in sets])
        values = np.fromiter((v for s in sets for v in sorted(s)), dtype=np.uint32, count=int(offsets[-1]))
        return cls(values, offsets)

    @classmethod
    def of_texts(cls, examples: Iterable[Sequence[str]], ngrams: int = DEFAULT_NGRAMS) -> Shingled:
        """The shingles of many examples, each given as its texts (its turns)."""
        parts, it = [], iter(examples)
        while chunk := list(islice(it, CHUNK)):
            parts.append(_shingle_chunk(chunk, ngrams))
        if not parts:
            return cls(np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64))
        ends = np.cumsum([int(p.offsets[-1]) for p in parts[:-1]])
        offsets = [parts[0].offsets] + [p.offsets[1:] + end for p, end in zip(parts[1:], ends, strict=True)]
        return cls(np.concatenate([p.values for p in parts]), np.concatenate(offsets))


def _normalized_words(examples: Sequence[Sequence[str]]) -> list[str]:
    """normalize_text(" ".join(texts)).split() of every example, one after another, each followed by _END: the
    texts normalized in one pass (for ASCII, a translation with the same effect)."""
    joined = _SEPARATOR.join(" ".join(texts) for texts in examples) + _SEPARATOR
    if joined.count(_SEPARATOR) != len(examples):  # a text holds the separator: it is only whitespace there
        joined = _SEPARATOR.join(" ".join(texts).replace(_SEPARATOR, " ") for texts in examples) + _SEPARATOR
    if joined.isascii():
        normalized = joined.lower().translate(_ASCII)
    else:
        normalized = NOT_WORD.sub("", unicodedata.normalize("NFKC", joined).casefold())
    return normalized.replace(_SEPARATOR, f" {_END} ").split()


def _shingle_chunk(examples: Sequence[Sequence[str]], ngrams: int) -> Shingled:
    if len(_words) >= _WORD_CACHE_LIMIT:
        _words.clear()
    words = _normalized_words(examples)
    codes = np.fromiter(map(_words.__getitem__, words), dtype=np.int64, count=len(words))
    is_end = codes < 0
    owner: np.ndarray = (np.cumsum(is_end) - is_end)[~is_end]  # the example of each word
    hashes = codes[~is_end].astype(np.uint64)
    ends = np.cumsum(np.bincount(owner, minlength=len(examples)))[owner]  # where each word's example's words end
    owners, found, run = [owner], [hashes], hashes
    for length in range(2, ngrams + 1):
        run = ((run[:-1] * np.uint64(0x9E3779B1)) ^ hashes[length - 1:]) & _MASK32
        inside = np.arange(len(run)) + length <= ends[:len(run)]  # the run's words are all of one example
        owners.append(owner[:len(run)][inside])
        found.append(run[inside])
    keyed = (np.concatenate(owners).astype(np.uint64) << np.uint64(32)) | np.concatenate(found)
    keyed.sort()
    keyed = keyed[np.concatenate([[True], keyed[1:] != keyed[:-1]])] if len(keyed) else keyed
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount((keyed >> np.uint64(32)).astype(np.int64), minlength=len(examples)))
    return Shingled((keyed & _MASK32).astype(np.uint32), offsets)


def shingles(texts: Iterable[str], ngrams: int = DEFAULT_NGRAMS) -> frozenset[int]:
    """The 32-bit shingle hashes of some texts (an example's turns): words, then runs of up to `ngrams` words."""
    return Shingled.of_texts([list(texts)], ngrams).set(0)


def signatures(shingled: Shingled) -> np.ndarray:
    """The MinHash signatures (one row of NUM_PERM uint32 per example); an empty set gets the all-ones one."""
    values, offsets = shingled.values, shingled.offsets
    out = np.full((len(shingled), NUM_PERM), 0xFFFFFFFF, dtype=np.uint32)
    mixed = _mix(values.astype(np.uint64))
    start = 0
    while start < len(shingled):
        stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + _HASHED_AT_ONCE, side="right")) - 1)
        stop = min(stop, len(shingled))
        rows = start + np.flatnonzero(offsets[start + 1:stop + 1] > offsets[start:stop])  # not empty
        if len(rows):
            low, high = offsets[start], offsets[stop]
            hashed = _A[:, None] * mixed[None, low:high]  # a permutation per row; arithmetic modulo 2**64
            hashed += _B[:, None]
            # the high 32 bits are the hash; the minimum of those is the high 32 bits of the minimum
            out[rows] = (np.minimum.reduceat(hashed, offsets[rows] - low, axis=1) >> np.uint64(32)).T
        start = stop
    return out


def signature(shingle_set: frozenset[int]) -> np.ndarray:
    """The MinHash signature (NUM_PERM uint32) of one shingle set."""
    sig: np.ndarray = signatures(Shingled.of_sets([shingle_set]))[0]
    return sig


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for a threshold: the most rows (fewest candidates) such that a pair at the threshold shares a
    band with a probability of at least 0.99."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands and 1 - (1 - threshold ** rows) ** bands >= 0.99:
            best = (bands, rows)
    return best


def agreement_floor(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The most signature positions a candidate must agree in such that a pair at the threshold (each position
    agreeing with that probability) falls short with a probability below 0.001."""
    below, floor = 0.0, 0
    for agree in range(num_perm + 1):
        below += math.comb(num_perm, agree) * threshold ** agree * (1 - threshold) ** (num_perm - agree)
        if below >= _MISS_AT_FLOOR:
            break
        floor = agree + 1
    return floor


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


@dataclass(frozen=True)
class Match:
    """What an example nearly repeats: the key of the kept example and their exact similarity."""

    key: str
    similarity: float


class NearIndex:
    """The examples kept so far (see the module docstring): `add_all` keeps examples, `admit_all` keeps those that
    nearly repeat nothing kept before them; `add`, `find` and `admit` do the same for one example."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ngrams: int = DEFAULT_NGRAMS) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], not {threshold}")
        self.threshold, self.ngrams = threshold, ngrams
        self.bands, self.rows = bands_for(threshold)
        self.floor = agreement_floor(threshold)
        self._salt = np.arange(self.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        # a band's key (its rows hashed to 64 bits, and which band it is) -> the rank of its one member, or the list
        # of its members: most buckets hold one example. A collision of keys only adds a candidate.
        self._buckets: dict[int, int | list[int]] = {}
        self._keys: list[str] = []
        self._sets: list[np.ndarray] = []  # each kept example's shingles (uint32, a view of its Shingled)
        # row r: the low 16 bits of each minimum hash of rank r (spare rows after), for the agreement count (where a
        # chance agreement of 1 in 65,536 can only let one more candidate through to the exact verification)
        self._sigs = np.zeros((0, NUM_PERM), dtype=np.uint16)

    def __len__(self) -> int:
        return len(self._keys)

    def add_all(self, keys: Sequence[str], shingled: Shingled) -> None:
        """Keep examples: later ones are compared with them."""
        self._walk(keys, shingled, find=False, keep=True)

    def admit_all(self, keys: Sequence[str], shingled: Shingled,
                  skip: Sequence[bool] | None = None) -> list[Match | None]:
        """What each example nearly repeats, in order; one that repeats nothing is kept (for the next ones) and
        gets None. An example with `skip` set is left out (neither compared nor kept) and gets None."""
        return self._walk(keys, shingled, find=True, keep=True, skip=skip)

    def add(self, key: str, shingle_set: frozenset[int]) -> None:
        self.add_all([key], Shingled.of_sets([shingle_set]))

    def find(self, shingle_set: frozenset[int]) -> Match | None:
        """The first kept example this one nearly repeats, or None."""
        return self._walk([""], Shingled.of_sets([shingle_set]), find=True, keep=False)[0]

    def admit(self, key: str, shingle_set: frozenset[int]) -> Match | None:
        return self.admit_all([key], Shingled.of_sets([shingle_set]))[0]

    def _band_keys(self, sigs: np.ndarray) -> list[list[int]]:
        rows = sigs[:, :self.bands * self.rows].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        key = rows[:, :, 0]
        for r in range(1, self.rows):
            key = (key * np.uint64(0x100000001B3)) ^ rows[:, :, r]
        keys: list[list[int]] = _mix(key + self._salt[None, :]).tolist()
        return keys

    def _walk(self, keys: Sequence[str], shingled: Shingled, *, find: bool, keep: bool,
              skip: Sequence[bool] | None = None) -> list[Match | None]:
        results: list[Match | None] = [None] * len(shingled)
        if keep and len(self._keys) + len(shingled) > len(self._sigs):
            spare = np.zeros((max(len(shingled), len(self._keys)), NUM_PERM), dtype=np.uint16)
            self._sigs = np.concatenate([self._sigs[:len(self._keys)], spare])
        buckets, values, offsets = self._buckets, shingled.values, shingled.offsets.tolist()
        for start in range(0, len(shingled), CHUNK):
            sigs = signatures(shingled.part(start, min(start + CHUNK, len(shingled))))
            low = sigs.astype(np.uint16)
            for i, (sig, bands) in enumerate(zip(low, self._band_keys(sigs), strict=True), start):
                if skip is not None and skip[i]:
                    continue
                mine, hits = values[offsets[i]:offsets[i + 1]], list(map(buckets.get, bands))
                if find:
                    found: set[int] = set()
                    for members in hits:
                        if members is not None:
                            if isinstance(members, int):
                                found.add(members)
                            else:
                                found.update(members)
                    if found and (match := self._verify(sorted(found), sig, mine)) is not None:
                        results[i] = match
                        continue
                if keep:
                    rank = len(self._keys)
                    self._keys.append(keys[i])
                    self._sets.append(mine)
                    self._sigs[rank] = sig
                    for band, members in zip(bands, hits, strict=True):
                        if members is None:
                            buckets[band] = rank
                        elif isinstance(members, int):
                            buckets[band] = [members, rank]
                        elif len(members) < BUCKET_CAP:
                            members.append(rank)
        return results

    def _verify(self, ranks: list[int], sig: np.ndarray, shingled: np.ndarray) -> Match | None:
        """The first of the candidates (ranks, in order) similar enough, by the exact similarity."""
        at = np.array(ranks)
        likely = at[np.add.reduce(self._sigs[at] == sig, axis=1) >= self.floor].tolist()
        size, threshold, mine = len(shingled), self.threshold, None
        for rank in likely:
            other = self._sets[rank]
            # |A n B| / |A u B| >= t needs t * max(|A|, |B|) <= min(|A|, |B|)
            if threshold * max(size, len(other)) > min(size, len(other)):
                continue
            mine = frozenset(shingled.tolist()) if mine is None else mine
            common = len(mine.intersection(other.tolist()))
            union = size + len(other) - common
            similarity = common / union if union else 1.0
            if similarity >= threshold:
                return Match(self._keys[rank], similarity)
        return None


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that LSH offers a pair of this similarity as a candidate."""
    return 1 - (1 - similarity ** rows) ** bands


def rounded(value: float) -> str:
    """A similarity as reasons show it (two decimals, rounded down, so 0.7999 never reads 0.80)."""
    return f"{math.floor(value * 100) / 100:.2f}"


__all__ = ["BUCKET_CAP", "DEFAULT_NGRAMS", "DEFAULT_THRESHOLD", "Match", "NUM_PERM", "NearIndex", "Shingled",
           "agreement_floor", "bands_for", "candidate_probability", "jaccard", "rounded", "shingles", "signature",
           "signatures"]
