"""Near-duplicate detection measured on a labelled set of pairs (tests/fixtures/near_duplicates/pairs.jsonl): planted
near-duplicates (case, punctuation, two words swapped, one word changed) against hard negatives (the same template
with other values, the same task under another operation, the most alike answers made from different seeds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import (
    DEFAULT_THRESHOLD,
    NUM_PERM,
    NearIndex,
    Shingled,
    agreement_floor,
    bands_for,
    candidate_probability,
    jaccard,
    shingles,
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
