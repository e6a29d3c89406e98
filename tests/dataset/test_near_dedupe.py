"""Near-duplicate detection measured on a labelled set of pairs (tests/fixtures/near_duplicates/pairs.jsonl): planted
near-duplicates (case, punctuation, two words swapped, one word changed) against hard negatives (the same template
with other values, the same task under another operation, the most alike answers made from different seeds)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from batchgen.dataset import near
from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import (
    BLOCK,
    DEFAULT_THRESHOLD,
    NUM_PERM,
    Buckets,
    NearIndex,
    Shingled,
    Signed,
    SignedByKey,
    agreement_floor,
    bands_for,
    candidate_probability,
    jaccard,
    shingles,
    sign_texts,
    signature,
)

PAIRS = [json.loads(line) for line in
         (Path(__file__).parent.parent / "fixtures" / "near_duplicates" / "pairs.jsonl").read_text().splitlines()]


def detected(pair: dict[str, object], threshold: float = DEFAULT_THRESHOLD) -> bool:
    index = NearIndex(threshold)
    index.add("a", shingles(example_texts(pair["a"], "sharegpt")))
    return index.find(shingles(example_texts(pair["b"], "sharegpt"))) is not None


def test_the_labelled_set_is_large_and_mixed() -> None:
    kinds = Counter((p["kind"], p["near"]) for p in PAIRS)
    assert len(PAIRS) >= 200 and sum(not p["near"] for p in PAIRS) >= 100
    assert {k for k, near in kinds if near} == {"case", "punctuation", "word_order", "changed_word"}


@pytest.mark.parametrize("threshold", [DEFAULT_THRESHOLD, 0.75])
def test_planted_near_duplicates_are_found_with_precision_and_recall_of_095(threshold: float) -> None:
    hits = [(p["near"], detected(p, threshold)) for p in PAIRS]
    true_positive = sum(near and found for near, found in hits)
    recall = true_positive / sum(near for near, _ in hits)
    precision = true_positive / sum(found for _, found in hits)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)
    for kind in ("case", "punctuation", "word_order", "changed_word"):
        of_kind = [detected(p, threshold) for p in PAIRS if p["kind"] == kind]
        assert sum(of_kind) / len(of_kind) >= 0.9, kind


def test_lsh_offers_every_pair_at_the_threshold_as_a_candidate_nearly_always() -> None:
    for threshold in (0.6, 0.7, 0.8, 0.9):
        bands, rows = bands_for(threshold)
        assert bands * rows <= 128 and candidate_probability(threshold, bands, rows) >= 0.99
    missed = 0
    for pair in PAIRS:
        a, b = (shingles(example_texts(pair[k], "sharegpt")) for k in "ab")
        if jaccard(a, b) >= DEFAULT_THRESHOLD and not detected(pair):
            missed += 1
    assert missed <= 2


def test_the_first_kept_example_is_the_one_named() -> None:
    index = NearIndex()
    first = shingles(["Create a task to review the quarterly budget by Friday, high priority please"])
    again = shingles(["create a task to review the quarterly budget by friday high priority please!"])
    index.add("first", first)
    index.add("second", again)
    found = index.find(shingles(["Create a task to review the quarterly budget by Friday high priority, please"]))
    assert found is not None and found.key == "first" and found.similarity == 1.0
    assert index.find(shingles(["Delete the dentist appointment, it moved to next month"])) is None


def test_signatures_are_the_same_in_every_process() -> None:
    text = "Add a high priority task for the team meeting tomorrow"
    here = signature(shingles([text]))[:8].tolist()
    code = ("import sys; from batchgen.dataset.near import shingles, signature; "
            f"print(signature(shingles([{text!r}]))[:8].tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=Path(__file__).parent.parent.parent)
    assert json.loads(other.stdout) == here


def test_shingles_ignore_case_and_punctuation_but_see_word_pairs() -> None:
    assert shingles(["Call MOM, now!"]) == shingles(["call mom now"])
    assert shingles(["a b c"], ngrams=1) == shingles(["c b a"], ngrams=1)
    assert shingles(["a b c"]) != shingles(["c b a"])


def test_shingling_many_examples_at_once_gives_each_its_own_shingles() -> None:
    examples = [example_texts(p[k], "sharegpt") for p in PAIRS for k in "ab"]
    examples += [[], [""], ["!!!"], ["Straße ＦＵＬＬ｜width, ﬁne"], ["one\x1etwo", "three"], ["a | b"], ["x"]]
    for ngrams in (1, 2, 3):
        together = Shingled.of_texts(examples, ngrams)
        assert len(together) == len(examples)
        assert [together.set(i) for i in range(len(examples))] == [shingles(e, ngrams) for e in examples]
    assert shingles(["one\x1etwo three"]) == shingles(["one two", "three"])


def test_admitting_many_at_once_gives_the_verdicts_of_one_at_a_time() -> None:
    texts = [example_texts(p[k], "sharegpt") for p in PAIRS for k in "ab"]
    keys = [str(i) for i in range(len(texts))]
    one, many = NearIndex(), NearIndex()
    one.add("seed", shingles(texts[0]))
    many.add_all(["seed"], Shingled.of_texts(texts[:1]))
    each = [one.admit(key, shingles(t)) for key, t in zip(keys, texts, strict=True)]
    skip = [i % 7 == 3 for i in range(len(texts))]
    assert many.admit_all(keys, Shingled.of_texts(texts)) == each and sum(m is not None for m in each) >= 100
    again = NearIndex()
    skipped = again.admit_all(keys, Shingled.of_texts(texts), skip=skip)
    assert all(m is None for m, s in zip(skipped, skip, strict=True) if s) and len(again) < len(texts) - sum(skip)


def test_the_agreement_floor_drops_a_pair_at_the_threshold_rarely() -> None:
    for threshold in (0.6, 0.8, 0.9):
        floor = agreement_floor(threshold)
        below = sum(math.comb(NUM_PERM, k) * threshold ** k * (1 - threshold) ** (NUM_PERM - k) for k in range(floor))
        assert below < 0.001 and floor > NUM_PERM * (threshold - 0.2)


def planted(count: int, seed: int = 5) -> list[list[str]]:
    """`count` examples of one template with other values, every fifth a copy of an earlier one with one word
    changed: more than a block of the walk, with near-duplicates in every block."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    texts: list[list[str]] = []
    for i in range(count):
        if i % 5 == 4:
            copy = texts[rng.randrange(len(texts))][1].split()
            copy[rng.randrange(len(copy))] = rng.choice(words)
            texts.append(["Add a task, please", " ".join(copy)])
        else:
            texts.append(["Add a task, please", " ".join(rng.choice(words) for _ in range(24))])
    return texts


def test_a_walk_of_many_blocks_is_the_same_with_a_second_thread_in_any_order_given(monkeypatch) -> None:
    texts = planted(3 * BLOCK)
    keys = [str(i) for i in range(len(texts))]
    shingled = Shingled.of_texts(texts)
    seeds = Shingled.of_texts(texts[:3])

    def walk(**options: object) -> list[object]:
        index = NearIndex()
        index.add_all(["seed:0", "seed:1", "seed:2"], seeds)
        return index.admit_all(keys, options.pop("signed", shingled), **options)  # type: ignore[arg-type]

    monkeypatch.setattr(near, "_PARALLEL", False)
    alone = walk()
    assert sum(m is not None for m in alone) >= len(texts) // 6
    assert {m.key for m in alone if m is not None} & {"seed:0", "seed:1", "seed:2"}
    monkeypatch.setattr(near, "_PARALLEL", True)
    assert walk() == alone
    # the same examples held in another order, each walked as row order[i]; their band keys grouped ahead
    order = np.random.default_rng(3).permutation(len(texts))
    held = Signed.of(shingled, *bands_for(DEFAULT_THRESHOLD)).take(np.argsort(order))
    assert walk(signed=held, order=order) == alone
    assert walk(signed=held, order=order, buckets=Buckets.of_signed(held), last=True) == alone
    skip = [i % 9 == 0 for i in range(len(texts))]
    assert walk(signed=held, order=order, skip=skip) == walk(skip=skip)


def test_merging_sorted_keys_finds_every_key_in_the_union() -> None:
    rng = np.random.default_rng(8)
    def keys(*values: int) -> np.ndarray:
        return np.array(values, dtype=np.uint64)

    cases = [(keys(), keys(3, 9)), (keys(3, 9), keys()), (keys(1, 2), keys(1, 2)), (keys(5), keys(1, 9))]
    cases += [(np.unique(rng.integers(0, 50, n).astype(np.uint64)), np.unique(rng.integers(0, 50, m).astype(np.uint64)))
              for n, m in ((10, 30), (40, 3), (0, 0), (25, 25))]
    for a, b in cases:
        union, in_a, in_b = near._merged(a, b)
        assert union.tolist() == np.union1d(a, b).tolist()
        assert union[in_a].tolist() == a.tolist() and union[in_b].tolist() == b.tolist()


def test_signed_by_key_keeps_what_a_key_was_first_given() -> None:
    texts = planted(40)
    first, second = (sign_texts(texts[:20], DEFAULT_THRESHOLD, 2), sign_texts(texts[20:], DEFAULT_THRESHOLD, 2))
    store = SignedByKey()
    store.add([f"a#{i}" for i in range(20)], first, lambda key: not key.endswith("#3"))
    store.add([f"a#{i}" for i in range(10)] + [f"b#{i}" for i in range(10)], second, lambda key: True)
    assert len(store) == 30 and store.rows(["c#0"]).tolist() == [-1]
    joined, buckets = store.joined()

    def held(key: str) -> frozenset[int]:
        return joined.shingled.set(int(store.rows([key])[0]))

    assert held("a#0") == shingles(texts[0])  # the first part's, not the second's
    assert held("a#3") == shingles(texts[23])  # not wanted from the first part: the second gave it
    assert held("b#9") == shingles(texts[39])
    assert buckets.keys[buckets.of].tolist() == joined.bands.tolist()
    with pytest.raises(ValueError, match="after prepare"):
        store.add(["d#0"], first.take(np.array([0])), lambda key: True)


@pytest.mark.parametrize("n", [1, 2, 3, 100, 5000])
def test_band_keys_are_grouped_as_numpy_groups_them(n: int) -> None:
    """The band keys' grouping sorts their high bits packed with an index; keys that differ only in the low bits
    (where the index goes) must still come out in order, each group once."""
    rng = np.random.default_rng(n)
    distinct = rng.integers(0, 2**64, size=max(1, n // 3), dtype=np.uint64)
    shapes = [
        rng.choice(distinct, size=n),  # hashes, many repeated
        (rng.choice(distinct, size=n) >> np.uint64(61) << np.uint64(61))
        | rng.integers(0, 16, size=n, dtype=np.uint64),  # the same high bits, different low ones
        np.arange(n, dtype=np.uint64)[::-1].copy(),  # every key below the index's bits
    ]
    for keys in shapes:
        groups, of = near._unique(keys)
        expected, inverse = np.unique(keys, return_inverse=True)
        assert groups.tolist() == expected.tolist() and of.tolist() == inverse.ravel().tolist()
