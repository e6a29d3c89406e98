"""How a plan counts the requests of a stage: every one of them, or a stratified sample that stands for them.

A sample cuts the stage's requests 0..N-1 into `size` consecutive strata whose sizes differ by one at most, and
draws one request from each with a generator seeded by the spec hash and the stage (the same spec, the same
sample). Each sampled request stands for its stratum: its tokens and bytes count as many times as the stratum has
requests, so the totals stay integers, and a plan prices every distinct token count exactly (Decimal) times its
weight. Strata keep every part of the order (axis cells, passes over the seed file) in the sample in proportion;
the draw inside each stratum keeps it from lining up with a rotation, as a fixed step could (a step that is a
multiple of the number of axis cells sees one cell only). The 95 % margin reported for the input tokens is that
of a simple random sample of the same size, which a stratified sample with strata in proportion does not exceed.

Given a `PrefixCache` (`batchgen.recipe.prefix`), each rendered request is also matched against the earlier ones
for the prompt cache: `cached` holds the requests by (input tokens, expected cached tokens), weighted alike. A
sampled request is matched against the earlier requests of the sample only, so what it stands for is expected to
be cached at most as much as all the job's earlier requests would give it: a lower bound, never more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchgen.recipe.compile import ShardInfo, _Packer, iter_requests
from batchgen.recipe.prefix import PrefixCache
from batchgen.recipe.render import RenderedRequest
from batchgen.recipe.spec import JobSpec, ResolvedStage

Z_95 = 1.96


@dataclass
class Tally:
    """What rendering a stage's requests found: requests by input tokens (weighted by what each stands for)."""

    by_input: dict[int, int] = field(default_factory=dict)
    bytes: int = 0
    rendered: int = 0
    margin: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    cached: dict[tuple[int, int], int] = field(default_factory=dict)  # (input, cached tokens) -> requests, cached > 0
    prefixes: PrefixCache | None = None

    def add(self, request: RenderedRequest, weight: int = 1) -> None:
        tokens = request.input_tokens
        self.by_input[tokens] = self.by_input.get(tokens, 0) + weight
        self.bytes += len(request.line) * weight
        self.rendered += 1
        if self.prefixes is not None and request.prefix is not None:
            cached = self.prefixes.add(request.prefix)
            if cached:
                self.cached[tokens, cached] = self.cached.get((tokens, cached), 0) + weight

    @property
    def cached_tokens(self) -> int:
        return sum(cached * weight for (_, cached), weight in self.cached.items())


def count_every(spec: JobSpec, stage: ResolvedStage, sources: list[dict[str, Any]] | None,
                prefixes: PrefixCache | None = None) -> Tally:
    """Every request of the stage, packed into the shards compile would write."""
    tally = Tally(prefixes=prefixes)
    packer = _Packer(spec.limits, spec.model, stage, 1, None)
    for request in iter_requests(spec, stage, sources=sources, prefixes=prefixes is not None):
        packer.add(request)
        tally.add(request)
    packer.close()
    tally.shards = packer.shards
    return tally


def count_sample(spec: JobSpec, stage: ResolvedStage, sources: list[dict[str, Any]] | None, count: int,
                 size: int, prefixes: PrefixCache | None = None) -> Tally:
    """`size` requests of the stage's `count`, one from each stratum, each weighted by its stratum's size."""
    drawn = list(strata(count, size, f"{spec.spec_hash}/{stage.name}"))
    tally, tokens = Tally(prefixes=prefixes), list[int]()
    chosen = iter_requests(spec, stage, indices=[i for i, _ in drawn], sources=sources, sparse=True,
                           prefixes=prefixes is not None)
    for request, (_, weight) in zip(chosen, drawn, strict=True):
        tally.add(request, weight)
        tokens.append(request.input_tokens)
    mean = sum(tokens) / size
    variance = sum((t - mean) ** 2 for t in tokens) / (size - 1)
    tally.margin = math.ceil(Z_95 * count * math.sqrt(variance / size * (1 - size / count)))
    return tally


def strata(count: int, size: int, seed: str) -> Iterator[tuple[int, int]]:
    """(index, weight): one index drawn from each of `size` consecutive strata of 0..count-1, in order, and the
    size of its stratum (see the module docstring)."""
    rng = random.Random(seed)
    for j in range(size):
        low, high = j * count // size, (j + 1) * count // size
        yield low + rng.randrange(high - low), high - low


def estimated_shards(spec: JobSpec, stage: ResolvedStage, requests: int, size: int, tokens: int) -> list[ShardInfo]:
    """Shards of a sampled stage: as few as the line, byte and token limits allow, sharing the totals evenly."""
    limits, cap = spec.limits, spec.limits.max_queued_tokens
    parts = max(-(-requests // limits.max_lines), -(-size // limits.max_bytes), -(-tokens // cap) if cap else 1)

    def share(total: int, number: int) -> int:
        return (number + 1) * total // parts - number * total // parts

    return [
        ShardInfo("", "", n, stage.name, 1, spec.model, share(requests, n), share(size, n), share(tokens, n),
                  share(requests, n) * stage.max_tokens, "")
        for n in range(parts)
    ]
