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
the same results. Examples can be signed ahead, elsewhere (`sign_texts`, `SignedByKey`: the worker that judges a
result file signs them), and walked in another order than they are held (`admit_all(order=...)`). Where there is a
second CPU, the candidates of half of each block of the walk are checked in a second thread (numpy lets go of the
GIL for the bulk of that work).
"""

from __future__ import annotations

import itertools
import math
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice

import numpy as np

from batchgen.cpus import usable_cpus
from batchgen.dataset.validate import ASCII_NOT_WORD, NOT_WORD

NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8
DEFAULT_NGRAMS = 2
BUCKET_CAP = 4
CHUNK = 4096  # examples normalized, shingled and signed at once
BLOCK = 4096  # examples whose candidates are found and checked at once
_GROUP_PAIRS = 12  # earlier examples of a group of the block each is checked against at once (see _walk)
_GROUPS = 32  # groups an example's shingles are counted in, for a bound on the intersection of two
_SEED = 20_261_206
_MASK32 = np.uint64(0xFFFFFFFF)
_WORD_CACHE_LIMIT = 1 << 18
_HASHED_AT_ONCE = 1 << 13  # shingles hashed against every permutation at once: a matrix of 4 MB
_SEPARATOR = "\x1e"  # between examples' texts while they are normalized together (whitespace to normalize_text)
_END = "|"  # what the separator becomes: a word no text can have once normalized (punctuation is removed)
_MISS_AT_FLOOR = 0.001
_PARALLEL = usable_cpus() > 1  # a second thread helps (see SignedByKey.prepare and NearIndex._walk)


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
        normalized = joined.lower().translate(ASCII_NOT_WORD)
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


def _group_counts(shingled: Shingled) -> tuple[np.ndarray, np.ndarray]:
    """How many of each example's shingles fall in each of _GROUPS groups (by the top bits of their mixed hash), as
    uint8, and whether a count was cut at 255 (then the bound from these counts does not hold)."""
    n, sizes = len(shingled), np.diff(shingled.offsets)
    group = (_mix(shingled.values.astype(np.uint64)) >> np.uint64(64 - _GROUPS.bit_length() + 1)).astype(np.int64)
    counts = np.bincount(np.repeat(np.arange(n), sizes) * _GROUPS + group, minlength=n * _GROUPS).reshape(n, _GROUPS)
    clipped = np.asarray((counts > 255).any(axis=1), dtype=bool)
    return np.minimum(counts, 255).astype(np.uint8), clipped


_SALT = np.arange(NUM_PERM, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Each signature's bands (`bands` of `rows` minimum hashes) hashed to 64 bits, and which band each is."""
    cut = sigs[:, :bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    key = cut[:, :, 0]
    for r in range(1, rows):
        key = (key * np.uint64(0x100000001B3)) ^ cut[:, :, r]
    keys: np.ndarray = _mix(key + _SALT[None, :bands])
    return keys


@dataclass(frozen=True)
class Signed:
    """What a walk of `NearIndex` needs of many examples, all a function of their shingles (so it may be made
    ahead of the walk, or elsewhere): the shingles, the low 16 bits of each minimum hash, the band keys (for a
    number of bands and rows), the shingles counted in _GROUPS groups and whether a count was cut."""

    shingled: Shingled
    sigs: np.ndarray
    bands: np.ndarray
    counts: np.ndarray
    clipped: np.ndarray

    def __len__(self) -> int:
        return len(self.shingled)

    @classmethod
    def of(cls, shingled: Shingled, bands: int, rows: int) -> Signed:
        n = len(shingled)
        sigs, keys = np.empty((n, NUM_PERM), dtype=np.uint16), np.empty((n, bands), dtype=np.uint64)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            full = signatures(shingled.part(start, stop))
            sigs[start:stop], keys[start:stop] = full, band_keys(full, bands, rows)
        counts, clipped = _group_counts(shingled)
        return cls(shingled, sigs, keys, counts, clipped)

    @classmethod
    def joined(cls, parts: Sequence[Signed], bands: int) -> Signed:
        """Examples of several, one after another."""
        if not parts:
            return cls(Shingled.of_sets([]), np.zeros((0, NUM_PERM), np.uint16), np.zeros((0, bands), np.uint64),
                       np.zeros((0, _GROUPS), np.uint8), np.zeros(0, bool))
        ends = np.cumsum([int(p.shingled.offsets[-1]) for p in parts[:-1]])
        offsets = [parts[0].shingled.offsets] + [p.shingled.offsets[1:] + end
                                                 for p, end in zip(parts[1:], ends, strict=True)]
        shingled = Shingled(np.concatenate([p.shingled.values for p in parts]), np.concatenate(offsets))
        return cls(shingled, *(np.concatenate([getattr(p, f) for p in parts])
                               for f in ("sigs", "bands", "counts", "clipped")))

    def take(self, chosen: np.ndarray) -> Signed:
        """Examples `chosen` (indices), in that order."""
        offsets = self.shingled.offsets
        sizes = offsets[chosen + 1] - offsets[chosen]
        taken = np.zeros(len(chosen) + 1, dtype=np.int64)
        taken[1:] = np.cumsum(sizes)
        at = np.repeat(offsets[chosen] - taken[:-1], sizes) + np.arange(int(taken[-1]))
        return Signed(Shingled(self.shingled.values[at], taken), self.sigs[chosen], self.bands[chosen],
                      self.counts[chosen], self.clipped[chosen])


def sign_texts(examples: Sequence[Sequence[str]], threshold: float, ngrams: int) -> Signed:
    """What a walk at `threshold` needs of some examples, each given as its texts (its turns)."""
    return Signed.of(Shingled.of_texts(examples, ngrams), *bands_for(threshold))


@dataclass(frozen=True)
class Buckets:
    """The band keys of some signed examples, grouped: the distinct `keys`, sorted, and which of them each band
    key of each example is (`of[i, band]`)."""

    keys: np.ndarray
    of: np.ndarray

    @classmethod
    def of_signed(cls, signed: Signed) -> Buckets:
        keys, inverse = _unique(signed.bands.ravel())
        return cls(keys, inverse.reshape(signed.bands.shape))

    def joined(self, other: Buckets) -> Buckets:
        """The examples of this one, then those of `other`."""
        keys, mine, theirs = _merged(self.keys, other.keys)
        return Buckets(keys, np.concatenate([mine[self.of], theirs[other.of]]))


class SignedByKey:
    """Examples signed ahead of a walk (by the worker that judges a result file), found again by key: `add` a part
    as it comes, then the `rows` of some keys in what is `joined`. A key keeps what it was first given: the caller
    adds only what it recorded, so that what a key holds was signed from the very text the ledger stores.

    `prepare` joins the parts and groups their band keys (`Buckets`) in a thread of its own, where there is a
    second CPU: numpy lets go of the GIL for most of that work, so it runs while the caller finishes recording."""

    def __init__(self) -> None:
        self._parts: list[Signed] = []
        self._rows: dict[str, int] = {}
        self._ready: Future[tuple[Signed, Buckets]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, keys: Sequence[str], signed: Signed, wanted: Callable[[str], bool]) -> None:
        """Keep the examples whose key is `wanted` and new here."""
        if self._ready is not None:
            raise ValueError("examples added after prepare")
        if len(keys) != len(signed):
            raise ValueError(f"{len(keys)} keys for {len(signed)} signed examples")
        start = len(self._rows)
        if all(map(wanted, keys)) and self._rows.keys().isdisjoint(keys) and len(set(keys)) == len(keys):
            self._rows.update(zip(keys, range(start, start + len(keys)), strict=True))  # the usual case, at once
        else:
            rows: list[int] = []
            for i, key in enumerate(keys):
                if key not in self._rows and wanted(key):
                    self._rows[key] = start + len(rows)
                    rows.append(i)
            signed = signed.take(np.array(rows, dtype=np.int64))
        if len(signed):
            self._parts.append(signed)

    def rows(self, keys: Iterable[str]) -> np.ndarray:
        """Each key's row, or -1 for one not signed here."""
        get = self._rows.get
        return np.fromiter((get(key, -1) for key in keys), dtype=np.int64)

    def prepare(self) -> None:
        """Start joining the parts and grouping their band keys (nothing may be added after)."""
        if self._ready is None:
            if _PARALLEL and self._parts:
                pool = ThreadPoolExecutor(1)
                self._ready = pool.submit(self._joined)
                pool.shutdown(wait=False)
            else:
                self._ready = Future()
                self._ready.set_result(self._joined())

    def joined(self) -> tuple[Signed, Buckets]:
        """Every example added, in the order of their rows, and their band keys grouped."""
        self.prepare()
        assert self._ready is not None
        return self._ready.result()

    def _joined(self) -> tuple[Signed, Buckets]:
        bands = self._parts[0].bands.shape[1] if self._parts else 0
        joined = Signed.joined(self._parts, bands)
        self._parts = []  # held once, joined
        return joined, Buckets.of_signed(joined)


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) of uint64 keys, without its argsort: one sort of the keys' high bits
    packed with each one's index (numpy sorts plain integers several times as fast as it argsorts them), then,
    where two different keys share their high bits (rare, as the keys are hashes), those runs sorted again by the
    whole key."""
    n = len(keys)
    if not n:
        return keys, np.zeros(0, dtype=np.int64)
    low = np.uint64((1 << max(1, (n - 1).bit_length())) - 1)  # the index's bits
    packed = keys & ~low
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & low).view(np.int64)
    ranked = keys[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    high = np.bitwise_and(packed, ~low, out=packed)
    clashes = np.flatnonzero((high[1:] == high[:-1]) & first[1:]) + 1  # a new key, but the same high bits
    if len(clashes):  # those runs of equal high bits are in the order of their indices: sort them by the whole key
        shared = np.unique(high[clashes])
        runs = zip(np.searchsorted(high, shared, "left").tolist(), np.searchsorted(high, shared, "right").tolist(),
                   strict=True)
        sub = np.concatenate([np.arange(start, stop) for start, stop in runs])
        resorted = sub[np.argsort(ranked[sub], kind="stable")]  # the runs stay where they are: high bits first
        order[sub], ranked[sub] = order[resorted], ranked[resorted]
        np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ranked[first], inverse


def _merged(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union of two sorted arrays of distinct keys, sorted, and where each key of `a` and of `b` is in it."""
    if not len(a) or not len(b):
        return (b if len(b) else a), np.arange(len(a)), np.arange(len(b))
    at = np.searchsorted(b, a)
    known = b[np.minimum(at, len(b) - 1)] == a
    extra = a[~known]
    in_b = np.arange(len(b)) + np.searchsorted(extra, b)  # each of b moves up by the extra keys below it
    in_a = np.empty(len(a), dtype=np.int64)
    in_a[known] = in_b[at[known]]
    in_a[~known] = np.arange(len(extra)) + np.searchsorted(b, extra)
    union = np.empty(len(b) + len(extra), dtype=b.dtype)
    union[in_b] = b
    union[in_a[~known]] = extra
    return union, in_a, in_b


def _segments(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """values[starts[k]:starts[k] + sizes[k]] for every k, one after another (as uint64)."""
    ends = np.cumsum(sizes)
    at = np.repeat(starts - (ends - sizes), sizes) + np.arange(int(ends[-1]) if len(ends) else 0)
    gathered: np.ndarray = values[at].astype(np.uint64)
    return gathered


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
    nearly repeat nothing kept before them; `add`, `find` and `admit` do the same for one example.

    Its state is held in numpy arrays: the kept examples' low signature halves, shingle group counts and sizes by
    rank, and the band buckets as a sorted array of band keys with the ranks of up to BUCKET_CAP members each.
    A walk over many examples (`_walk`) finds the candidates of BLOCK examples at a time from the buckets as they
    stood before the block, and walks one at a time, in Python, only the few examples that share a bucket not yet
    full with an earlier example of the same block; see `_walk`."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ngrams: int = DEFAULT_NGRAMS) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], not {threshold}")
        self.threshold, self.ngrams = threshold, ngrams
        self.bands, self.rows = bands_for(threshold)
        self.floor = agreement_floor(threshold)
        self._keys: list[str] = []
        self._sets: list[np.ndarray] = []  # each kept example's shingles (uint32, a view of its Shingled)
        # row r: rank r's low 16 bits of each minimum hash (for the agreement count, where a chance agreement of 1
        # in 65,536 can only let one more candidate through to the exact verification), its shingles counted in
        # _GROUPS groups, whether a count was cut at 255, and its number of shingles; spare rows after
        self._sigs = np.zeros((0, NUM_PERM), dtype=np.uint16)
        self._counts = np.zeros((0, _GROUPS), dtype=np.uint8)
        self._clipped = np.zeros(0, dtype=bool)
        self._sizes = np.zeros(0, dtype=np.int64)
        # the band buckets: a band's key (its rows hashed to 64 bits, and which band it is), sorted, and the ranks of
        # its first BUCKET_CAP kept members (-1 for none). A collision of keys only adds a candidate.
        self._bucket_keys = np.zeros(0, dtype=np.uint64)
        self._members = np.zeros((0, BUCKET_CAP), dtype=np.int32)

    def __len__(self) -> int:
        return len(self._keys)

    def add_all(self, keys: Sequence[str], shingled: Shingled | Signed) -> None:
        """Keep examples: later ones are compared with them."""
        self._walk(keys, self.signed(shingled), find=False, keep=True)

    def admit_all(self, keys: Sequence[str], shingled: Shingled | Signed, skip: Sequence[bool] | None = None, *,
                  order: np.ndarray | None = None, buckets: Buckets | None = None,
                  last: bool = False) -> list[Match | None]:
        """What each example nearly repeats, in order; one that repeats nothing is kept (for the next ones) and
        gets None. An example with `skip` set is left out (neither compared nor kept) and gets None. With `order`,
        example i is row order[i] of `shingled` (which saves a copy of them in that order). With `last`, the
        examples are kept for the walk only: the index stays as it was, which saves bringing it up to date.
        `buckets`: the band keys of `shingled`, grouped already."""
        return self._walk(keys, self.signed(shingled), find=True, keep=True, skip=skip, order=order,
                          buckets=buckets, last=last)

    def signed(self, shingled: Shingled | Signed) -> Signed:
        """What a walk needs of examples (see `Signed`), for this index's threshold."""
        if isinstance(shingled, Signed):
            if shingled.bands.shape[1] != self.bands:
                raise ValueError(f"examples signed for {shingled.bands.shape[1]} bands, not {self.bands}")
            return shingled
        return Signed.of(shingled, self.bands, self.rows)

    def add(self, key: str, shingle_set: frozenset[int]) -> None:
        self.add_all([key], Shingled.of_sets([shingle_set]))

    def find(self, shingle_set: frozenset[int]) -> Match | None:
        """The first kept example this one nearly repeats, or None."""
        return self._walk([""], self.signed(Shingled.of_sets([shingle_set])), find=True, keep=False)[0]

    def admit(self, key: str, shingle_set: frozenset[int]) -> Match | None:
        return self.admit_all([key], Shingled.of_sets([shingle_set]))[0]

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._sigs):
            return
        size, kept = max(rows, 2 * len(self._sigs)), len(self._keys)

        def grown(array: np.ndarray) -> np.ndarray:
            bigger = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
            bigger[:kept] = array[:kept]
            return bigger

        self._sigs, self._counts = grown(self._sigs), grown(self._counts)
        self._clipped, self._sizes = grown(self._clipped), grown(self._sizes)

    def _walk(self, keys: Sequence[str], signed: Signed, *, find: bool, keep: bool,
              skip: Sequence[bool] | None = None, order: np.ndarray | None = None,
              buckets: Buckets | None = None, last: bool = False) -> list[Match | None]:
        """The walk of `admit_all` (find and keep), `add_all` (keep) and `find` (find), with the verdicts of one
        example at a time in order. Example i of the walk takes row (its slot) kept + i of the arrays; the kept
        ones are moved down to their ranks at the end.

        Blocks of BLOCK examples: a bucket's members before a block are fixed, so the candidates they give every
        example of the block are found at once (the bucket of each band key looked up in bulk) and checked at
        once: the exact bound on the intersection (`_possible`), then the signature agreement, and only what
        passes both by the exact similarity. A candidate kept before the block ranks before any in it, so one
        found there is the answer. Inside a block only a bucket not yet full can gain members; the examples that
        share such a bucket with another of the block are walked in order, the others' verdicts are final."""
        shingled, old = signed.shingled, len(self._keys)
        rows = np.arange(len(signed)) if order is None else np.asarray(order, dtype=np.int64)
        n = len(rows)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} examples")
        results: list[Match | None] = [None] * n
        if n == 0:
            return results
        self._reserve(old + n)
        values = shingled.values
        if order is None:
            self._sigs[old:old + n], self._counts[old:old + n] = signed.sigs, signed.counts
            self._clipped[old:old + n] = signed.clipped
            starts, ends = shingled.offsets[:-1], shingled.offsets[1:]  # example i's shingles: starts[i]:ends[i]
        else:
            for array, mine in ((signed.sigs, self._sigs), (signed.counts, self._counts),
                                (signed.clipped, self._clipped)):
                np.take(array, rows, axis=0, out=mine[old:old + n])
            starts, ends = shingled.offsets[rows], shingled.offsets[rows + 1]
        self._sizes[old:old + n] = ends - starts
        active = np.ones(n, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
        walked = np.flatnonzero(active)
        entry_of = np.repeat(walked, self.bands)  # the example of each band key, in order
        if keep:  # a bucket for every key, the index's and the walk's, its members as they are now
            buckets = Buckets.of_signed(signed) if buckets is None else buckets
            bucket_keys, of_index, of_walk = _merged(self._bucket_keys, buckets.keys)
            members = np.full((len(bucket_keys), BUCKET_CAP), -1, dtype=np.int32)
            members[of_index] = self._members
            bucket_of = of_walk[buckets.of[rows[walked]].ravel()]
        else:  # nothing is added: only the buckets that exist can give candidates
            entries = signed.bands[rows[walked]].ravel()
            at = np.minimum(np.searchsorted(self._bucket_keys, entries), max(len(self._bucket_keys) - 1, 0))
            known = self._bucket_keys[at] == entries if len(self._bucket_keys) else np.zeros(len(entries), bool)
            bucket_keys, members = self._bucket_keys, self._members
            entry_of, bucket_of = entry_of[known], at[known].astype(np.int64)
            del entries
        filled = np.count_nonzero(members >= 0, axis=1).astype(np.int32)

        def exact(slot: int, i: int) -> float:
            other = self._sets[slot] if slot < old else values[starts[slot - old]:ends[slot - old]]
            mine = values[starts[i]:ends[i]]
            common = len(frozenset(mine.tolist()).intersection(other.tolist()))
            union = len(mine) + len(other) - common
            return common / union if union else 1.0

        matched: dict[int, tuple[int, float]] = {}  # example -> (slot of what it nearly repeats, similarity)
        kept = np.zeros(n, dtype=bool)
        bounds = np.searchsorted(entry_of, np.arange(0, n + BLOCK, BLOCK))
        # numpy lets go of the GIL in the bulk work of `_found`, so a second thread checks half of each block's
        # candidates where there is a second CPU
        with ThreadPoolExecutor(1) if find and n > BLOCK and _PARALLEL else nullcontext(None) as pool:
            for block, (low, high) in enumerate(itertools.pairwise(bounds.tolist())):
                if low == high:
                    continue
                mine, bucket = entry_of[low:high], bucket_of[low:high]
                if find:  # the candidates the buckets give as they stood before the block, in two halves at once
                    half = int(np.searchsorted(mine, mine[len(mine) // 2]))  # at the first band key of an example

                    if pool is not None and half > 0:
                        pending = pool.submit(self._found, mine[:half], members[bucket[:half]], values, starts,
                                              ends, old)
                        second = self._found(mine[half:], members[bucket[half:]], values, starts, ends, old)
                        halves = [pending.result(), second]
                    else:
                        halves = [self._found(mine, members[bucket], values, starts, ends, old)]
                    for example, slot, similar in halves:
                        for i, s, similarity in zip(example.tolist(), slot.tolist(), similar.tolist(), strict=True):
                            matched.setdefault(i, (s, similarity))
                if not keep:
                    continue
                # the buckets not yet full: those two examples of the block share are walked one example at a time
                open_ = filled[bucket] < BUCKET_CAP
                mine, bucket = mine[open_], bucket[open_]
                order = np.sort(bucket * len(bucket) + np.arange(len(bucket))) % len(bucket)  # by bucket, then example
                sorted_bucket = bucket[order]
                first = np.ones(len(bucket), dtype=bool)
                first[1:] = sorted_bucket[1:] != sorted_bucket[:-1]
                group = np.cumsum(first) - 1
                shared = np.zeros(len(bucket), dtype=bool)
                shared[order] = np.bincount(group, minlength=1)[group] > 1
                if find and shared.any():
                    checked = self._possible_in_groups(mine[order], group, first, old)
                    self._walk_shared(mine[shared].tolist(), bucket[shared].tolist(), filled, old, matched, exact,
                                      checked)
                start = block * BLOCK
                stop = min(start + BLOCK, n)
                kept[start:stop] = active[start:stop]
                kept[[i for i in range(start, stop) if i in matched]] = False
                # the kept examples join the buckets not yet full, in order, as far as there is room
                joins = kept[mine[order]]
                so_far = np.cumsum(joins) - joins  # joins before each, in the block
                place = filled[sorted_bucket] + so_far - so_far[np.flatnonzero(first)[group]]
                fits = joins & (place < BUCKET_CAP)
                members[sorted_bucket[fits], place[fits]] = (mine[order][fits] + old).astype(np.int32)
                joined = sorted_bucket[fits]
                if len(joined):
                    runs = np.flatnonzero(np.concatenate([[True], joined[1:] != joined[:-1]]))
                    filled[joined[runs]] += np.diff(np.append(runs, len(joined))).astype(np.int32)
        for i, (s, similarity) in matched.items():
            results[i] = Match(self._keys[s] if s < old else keys[s - old], similarity)
        if keep and not last:
            self._settle(keys, values, starts, ends, kept, bucket_keys, members, filled, old)
        return results

    def _found(self, mine: np.ndarray, candidates: np.ndarray, values: np.ndarray, starts: np.ndarray,
               ends: np.ndarray, old: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For band keys of examples `mine` (in order of example) and the members of their buckets (`candidates`, -1
        for none): each example that nearly repeats one of them, the first such by rank, and their similarity."""
        total = len(self._sigs)
        row, col = np.nonzero(candidates >= 0)
        pairs = np.sort(mine[row] * total + candidates[row, col])  # by example, then rank
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs
        example, slot = pairs // total, pairs % total
        likely = self._possible(slot, example + old)
        example, slot = example[likely], slot[likely]
        similar = self._similarities(example, slot, values, starts, ends, old)
        near = similar >= self.threshold
        example, slot, similar = example[near], slot[near], similar[near]
        firsts = np.flatnonzero(np.concatenate([[True], example[1:] != example[:-1]])[:len(example)])
        return example[firsts], slot[firsts], similar[firsts]

    def _possible_in_groups(self, slots: np.ndarray, group: np.ndarray, first: np.ndarray,
                            old: int) -> dict[int, bool]:
        """`_possible` of the pairs `_walk_shared` is likely to ask about, all at once: each example of a group
        (the block's examples, by bucket, then in order) with the first _GROUP_PAIRS before it in its group. Keyed
        by example * 2**32 + earlier example (both of the walk)."""
        starts = np.flatnonzero(first)[group]
        place = np.arange(len(slots)) - starts
        later, earlier = [], []
        for back in range(_GROUP_PAIRS):
            has = np.flatnonzero(place > back)
            later.append(slots[has])
            earlier.append(slots[starts[has] + back])
        pairs = np.unique((np.concatenate(later).astype(np.int64) << 32) | np.concatenate(earlier))
        if not len(pairs):
            return {}
        possible = self._possible((pairs & 0xFFFFFFFF) + old, (pairs >> 32) + old)
        return dict(zip(pairs.tolist(), possible.tolist(), strict=True))

    def _walk_shared(self, examples: list[int], buckets: list[int], filled: np.ndarray, old: int,
                     matched: dict[int, tuple[int, float]], exact: Callable[[int, int], float],
                     checked: dict[int, bool]) -> None:
        """Walk, in order, the examples of a block that share a bucket not yet full with another of the block
        (`examples` and `buckets`: such band keys, in order of example): an example not matched already is
        compared with the members the block has given these buckets so far, and joins them if it is kept.
        `checked`: `_possible` of pairs of them, as `_possible_in_groups` gives it."""
        joined: dict[int, list[int]] = {}  # bucket -> slots of the block's examples that joined it
        room = dict(zip(buckets, (BUCKET_CAP - filled[buckets]).tolist(), strict=False))
        threshold, at = self.threshold, 0
        while at < len(examples):
            i, end = examples[at], at
            while end < len(examples) and examples[end] == i:
                end += 1
            mine = buckets[at:end]
            at = end
            if i in matched:
                continue
            offered = sorted({s for b in mine for s in joined.get(b, ())})
            if offered:
                key = i << 32
                known = [checked.get(key | (s - old)) for s in offered]
                if None in known:
                    slots = np.array(offered)
                    known = self._possible(slots, np.full(len(slots), old + i)).tolist()
                for s in (s for s, possible in zip(offered, known, strict=True) if possible):
                    if (similarity := exact(s, i)) >= threshold:
                        matched[i] = (s, similarity)
                        break
                if i in matched:
                    continue
            for b in mine:
                members = joined.setdefault(b, [])
                if len(members) < room[b]:
                    members.append(old + i)

    def _similarities(self, examples: np.ndarray, slots: np.ndarray, values: np.ndarray, starts: np.ndarray,
                      ends: np.ndarray, old: int) -> np.ndarray:
        """The exact Jaccard similarity of each pair (example examples[k] of the walk, slot slots[k]), all at once:
        every pair's shingles keyed by the pair, each of the other's looked up among the example's (both sorted).
        Example i of the walk has the shingles values[starts[i]:ends[i]]."""
        pairs = np.arange(len(examples), dtype=np.uint64) << np.uint64(32)
        mine_sizes = ends[examples] - starts[examples]
        mine = _segments(values, starts[examples], mine_sizes) | np.repeat(pairs, mine_sizes)
        common = np.zeros(len(examples), dtype=np.int64)
        other_sizes = np.zeros(len(examples), dtype=np.int64)
        for where in (np.flatnonzero(slots >= old), np.flatnonzero(slots < old)):
            if not len(where):
                continue
            if slots[where[0]] >= old:  # of this walk
                at = slots[where] - old
                sizes = ends[at] - starts[at]
                other = _segments(values, starts[at], sizes)
            else:  # kept before it
                sets = [self._sets[slot] for slot in slots[where].tolist()]
                sizes = np.array([len(one) for one in sets], dtype=np.int64)
                other = np.concatenate(sets).astype(np.uint64)
            other_sizes[where] = sizes
            other |= np.repeat(pairs[where], sizes)
            found = np.minimum(np.searchsorted(mine, other), max(len(mine) - 1, 0))
            hit = mine[found] == other if len(mine) else np.zeros(len(other), dtype=bool)
            common += np.bincount(np.repeat(where, sizes)[hit], minlength=len(examples))
        union = mine_sizes + other_sizes - common
        similar: np.ndarray = np.where(union > 0, common / np.maximum(union, 1), 1.0)
        return similar

    def _possible(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which pairs of slots (a[k], b[k]) may be similar enough: the exact bound on their intersection (the sum
        over groups of the smaller count) allows the threshold, and their signatures agree in `floor` positions."""
        t = self.threshold
        common = np.minimum(self._counts[a], self._counts[b]).sum(axis=1, dtype=np.uint16)  # at most 255 _GROUPS
        # |A n B| / (|A| + |B| - |A n B|) >= t needs |A n B| >= t (|A| + |B|) / (1 + t)
        possible: np.ndarray = (common * (1 + t) >= t * (self._sizes[a] + self._sizes[b]) - 1e-9) | self._clipped[a]
        possible |= self._clipped[b]
        at = np.flatnonzero(possible)
        agree: np.ndarray = np.count_nonzero(self._sigs[a[at]] == self._sigs[b[at]], axis=1)
        possible[at] = agree >= self.floor
        return possible

    def _settle(self, keys: Sequence[str], values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                kept: np.ndarray, bucket_keys: np.ndarray, members: np.ndarray, filled: np.ndarray,
                old: int) -> None:
        """After a walk: the kept examples take the next ranks (their rows moved down), the buckets keep those
        with members, and their members' slots become ranks."""
        chosen = np.flatnonzero(kept)
        rank = np.full(old + len(kept), -1, dtype=np.int32)
        rank[:old] = np.arange(old, dtype=np.int32)
        rank[old + chosen] = old + np.arange(len(chosen), dtype=np.int32)
        for array in (self._sigs, self._counts, self._clipped, self._sizes):
            array[old:old + len(chosen)] = array[old + chosen]
        for i in chosen.tolist():
            self._keys.append(keys[i])
            self._sets.append(values[starts[i]:ends[i]])
        used = filled > 0
        members = members[used]
        self._members = np.where(members >= 0, rank[np.maximum(members, 0)], -1).astype(np.int32)
        self._bucket_keys = bucket_keys[used]


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that LSH offers a pair of this similarity as a candidate."""
    return 1 - (1 - similarity ** rows) ** bands


def rounded(value: float) -> str:
    """A similarity as reasons show it (two decimals, rounded down, so 0.7999 never reads 0.80)."""
    return f"{math.floor(value * 100) / 100:.2f}"


__all__ = ["BUCKET_CAP", "Buckets", "DEFAULT_NGRAMS", "DEFAULT_THRESHOLD", "Match", "NUM_PERM", "NearIndex",
           "Shingled", "Signed", "SignedByKey", "agreement_floor", "band_keys", "bands_for", "candidate_probability",
           "jaccard", "rounded", "shingles", "sign_texts", "signature", "signatures"]
