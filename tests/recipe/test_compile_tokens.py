"""Counting repeated parts once is exact: PartCounter equals tiktoken's own count on the whole text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from batchgen.recipe.render import PartCounter
from batchgen.recipe.tokens import get_encoding

PIECES = [
    "a",
    "Task",
    " the",
    "'s",
    "'LL",
    "42",
    "12345",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n",
    "/",
    "//",
    "{",
    "},",
    '"',
    ":",
    "...",
    "é",
    "東京",
    "🤖",
    "\u00a0",
    "\u2028",
    "-",
    "*",
    "#",
    "<|endoftext|>",
    "x/y",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize(("model", "encoding"), [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_random_text_counts_exactly(model: str, encoding: str) -> None:
    counter = PartCounter(model)
    enc = get_encoding(encoding)
    rng = random.Random(1234)
    for _ in range(3000):
        text = random_text(rng)
        assert counter.count(text) == len(enc.encode_ordinary(text)), repr(text)


@pytest.mark.parametrize(("model", "encoding"), [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_json_blocks_count_exactly(model: str, encoding: str) -> None:
    seeds = [
        json.loads(line)
        for line in (Path(__file__).resolve().parents[2] / "jobs" / "task_api" / "seeds.jsonl")
        .read_text()
        .splitlines()
    ]
    counter = PartCounter(model)
    enc = get_encoding(encoding)
    rng = random.Random(5)
    for _ in range(200):
        chosen = rng.sample(seeds, 5)
        text = (
            f"Intro {rng.random()}\n\n## Examples\n"
            + json.dumps(chosen, indent=2, ensure_ascii=False)
            + "\n  /path\n\n\n   \nEnd "
            + random_text(rng)
        )
        assert counter.count(text) == len(enc.encode_ordinary(text))
