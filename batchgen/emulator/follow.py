"""Simulated examples that follow what the prompt asks (`focus.Focus`), as a model would:

- **operation**: every example is of that operation, made from the prompt's seeds of it; when the prompt shows no
  seed of the operation, a seed is recast into the operation's answer format (`recast.Recaster`), with a request
  that names the operation.
- **errors**: "no" (false, none) gives no error examples; "yes" gives the share the line names, a third when it
  names none, spread evenly over the answer. An error example is a seed of the error format (naming the operation
  when one is asked for), or a request of the operation recast with an error answer.
- **style**: the request is worded in that style (`synth.Variation`).

A prompt that names none of these gets the seeds' own mixture, as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import orjson

from batchgen.emulator.focus import Focus, Seed, stem
from batchgen.emulator.recast import Recaster
from batchgen.emulator.synth import vary

_TRIES = 6  # attempts at an example that repeats none made before


def follow_examples(seeds: list[dict[str, Any]], kinds: list[str | None], count: int, rng: random.Random,
                    focus: Focus, fits: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]] | None:
    """`count` examples made from the seeds that follow what the prompt asks (see the module docstring); None when
    it asks nothing or no seed is of a known format, for the caller to vary the seeds as they come. `fits` tells
    whether a recast example is valid where it goes (the response schema)."""
    if not focus.asks:
        return None
    read = [s for s in (Seed.read(e, k, focus.formats) for e, k in zip(seeds, kinds, strict=True) if k) if s]
    if not read:
        return None
    plan = _Plan(read, focus, fits or (lambda _: True), {orjson.dumps(s) for s in seeds})
    start = rng.randrange(len(read))
    return [plan.example(start + i, plan.error_slot(i), rng) for i in range(count)]


class _Plan:
    """Which seeds an example may come from, and how to make one that repeats nothing made before."""

    def __init__(self, read: list[Seed], focus: Focus, fits: Callable[[dict[str, Any]], bool],
                 taken: set[bytes]) -> None:
        self.focus, self.fits, self.taken = focus, fits, taken
        self._fit: bool | None = None
        self.recaster = Recaster(focus, read)
        wanted = stem(focus.operation) if focus.operation else None
        if focus.errors is None and wanted is None:  # only a style: the seeds' own mixture, errors and all
            self.plain, self.share = read, Fraction(0)
        else:
            self.plain = [s for s in read if not s.error and (wanted is None or s.operation == wanted)]
            self.share = focus.errors or Fraction(0)
        self.errors = [s for s in read if s.error and (wanted is None or s.names(wanted))]
        self.sources = [s for s in read if not s.error] or read  # what a recast takes its title from

    def _fits(self, made: dict[str, Any]) -> bool:
        """Whether a recast example fits where it goes; asked of the first one only, since every recast of a prompt
        has one shape (a request and an answer in the seeds' format)."""
        if self._fit is None:
            self._fit = self.fits(made)
        return self._fit

    def error_slot(self, i: int) -> bool:
        """Whether example i is an error case: the share spread evenly over the answer."""
        return bool(self.share) and int((i + 1) * self.share) > int(i * self.share)

    def example(self, position: int, error: bool, rng: random.Random) -> dict[str, Any]:
        made = self._attempt(position, error, rng)
        for _ in range(_TRIES - 1):
            if orjson.dumps(made) not in self.taken:
                break
            made = self._attempt(position, error, rng)
        self.taken.add(orjson.dumps(made))
        return made

    def _attempt(self, position: int, error: bool, rng: random.Random) -> dict[str, Any]:
        if error:
            if self.errors:
                return self._varied(self.errors[position % len(self.errors)], rng)
            made = self._recast(position, rng, error=True)
            if made is not None:
                return made
        if self.plain:
            return self._varied(self.plain[position % len(self.plain)], rng)
        made = self._recast(position, rng, error=False)
        if made is not None:
            return made
        return self._varied(self.sources[position % len(self.sources)], rng)

    def _varied(self, seed: Seed, rng: random.Random) -> dict[str, Any]:
        return vary(seed.example, rng, seed.kind, self.focus.style)

    def _recast(self, position: int, rng: random.Random, error: bool) -> dict[str, Any] | None:
        """A seed made into an example of the wanted operation (an error case of it, if `error`)."""
        source = self.sources[position % len(self.sources)]
        made = self.recaster.example(source, self.focus.operation, rng, error)
        if made is None or not self._fits(made):
            return None
        return vary(made, rng, source.kind, self.focus.style)
