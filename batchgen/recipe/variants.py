"""Variants: what each request of a stage asks for. One variant = one request line.

A stage needs `request_count(spec, stage)` = ceil(target * overgeneration / examples_per_request) requests.
Variant i is computed directly from i (no state), so any subset of indices can be rebuilt for a retry, and a stage
that ends short of its target is topped up with the indices after the last one (every rotation goes on):

- **cell** (axis values), by the axes strategy:
  - `cross`: every combination of the axes, cycled. The combinations are ordered so that consecutive requests
    differ in the first axis (mostly in all) and any prefix is spread evenly: position p has mixed-radix
    digits r0 (fastest) .. rk, and axis k takes value (r0 + ... + rk) mod len(axis k), a bijection on the
    product.
  - `rotate`: each axis cycles through its own values (i mod n), shifted by one after every
    n x (joint cycle of the earlier axes) requests, so each axis stays balanced in every prefix and axes do
    not lock together. For axes whose cross product is far larger than the job.
  - `weighted`: every combination gets a share of the requests proportional to the product of its values'
    weights (default weight 1), allocated by largest remainder and interleaved evenly.
- **seeds**: the lesson's rotation: request i uses k consecutive seeds (mod the number of seeds) starting
  at i*k, moved one seed further after each full pass over the file, so the groups change from pass to pass.
- **temperature**: the stage's temperatures, rotated (i mod n).
- **sources** (stages with `from`): request i takes source examples i*e .. i*e+e-1 (mod their number). When the
  sources' cells are known (`source_cells`, the cells of the requests that made them), an evolved example keeps its
  parent's cell: the sources are grouped by cell (in order of first appearance), each request takes e consecutive
  sources of one cell (wrapping within it), the cells take turns request by request, and the request's cell is
  its sources' cell.
  A **judge stage** scores each source once: request i shows sources i*e .. i*e+e-1 (the last request fewer), so it
  has ceil(sources / e) requests, and no cell (its requests score examples of any cell). A later round of a judge
  (a retry, or the examples a top-up of its source added) names what each of its requests shows (`shown`).

A cell's **share** of a stage's target is the part of the planned requests (0..count-1) the strategy (or, for an
evolved stage, its sources' cells) gives it: floor(target x its planned requests / count) (`cell_shares`); a top-up
goes to the cells below their share, with indices after the last one requested whose cell is theirs
(`indices_for` of `cell_assigner`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any

from batchgen.recipe.spec import AxesSpec, JobSpec, ResolvedStage


@dataclass(frozen=True)
class Variant:
    """One request of a stage: its index, axis values, seed rotation, temperature and source examples."""

    index: int
    cell: dict[str, Any] = field(hash=False)
    seeds: tuple[int, ...]
    temperature: float
    sources: tuple[int, ...] = ()

    @property
    def cell_key(self) -> tuple[tuple[str, Any], ...]:
        return tuple(self.cell.items())


# The most requests one job may plan, over all its stages: 100 full batches of the Batch API's 50,000 requests,
# 20-30 GB of input files, 5 billion input tokens at 1,000 a request (five times the most gpt-4o-mini queues at
# usage tier 4), and thousands of dollars even on gpt-4o-mini. Beyond that a target is a slip of the keyboard, or
# a series of jobs. The loader refuses it in one line, before anything is rendered.
MAX_JOB_REQUESTS = 5_000_000


def request_count(spec: JobSpec, stage: ResolvedStage) -> int:
    """ceil(target * overgeneration / examples_per_request), computed exactly."""
    wanted = Decimal(stage.target) * spec.overgeneration / Decimal(stage.examples_per_request)
    return int(wanted.to_integral_value(rounding=ROUND_CEILING))


def job_request_count(spec: JobSpec) -> int:
    """The requests every stage of the job plans, together (top-ups come on top)."""
    return sum(request_count(spec, stage) for stage in spec.resolved_stages())


class _CellIndexing:
    """What coverage by cell asks of a stage's cell assignment, whichever assigns them: the planned requests of each
    cell, and the indices a top-up may use for a cell."""

    requests: int

    def cell(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def planned_counts(self) -> dict[str, int]:
        """How many of the planned requests (indices 0..requests-1) each cell gets, by `cell_key`, in the order of
        the cells' first request."""
        counts: dict[str, int] = {}
        for index in range(self.requests):
            key = cell_key(self.cell(index))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def indices_for(self, wanted: Mapping[str, int], start: int, scan: int) -> dict[str, list[int]]:
        """For each cell key, up to `wanted[key]` indices from `start` on whose cell it is, looking at `scan`
        indices at most (a cell of a rotate strategy can recur rarely)."""
        need = {key: n for key, n in wanted.items() if n > 0}
        found: dict[str, list[int]] = {key: [] for key in need}
        index = start
        while need and index < start + scan:
            key = cell_key(self.cell(index))
            if key in need:
                found[key].append(index)
                need[key] -= 1
                if not need[key]:
                    del need[key]
            index += 1
        return found


class CellPlan(_CellIndexing):
    """The axis cells of a stage and which cell each request index gets."""

    def __init__(self, axes: AxesSpec, requests: int, block_size: int = 4096):
        self.names = list(axes.values)
        self.values = [axes.values[name] for name in self.names]
        self.sizes = [len(v) for v in self.values]
        self.strategy = axes.strategy
        self.requests = requests
        self.block_size = block_size  # weighted: positions of the order found at once (1 for a sparse sample)
        self._axes = axes
        self._block_start, self._block = 0, list[int]()

    @property
    def cell_count(self) -> int:
        return math.prod(self.sizes)

    def cell(self, index: int) -> dict[str, Any]:
        """The axis values of request `index`."""
        if not self.names:
            return {}
        if self.strategy == "cross":
            digits = self._cross_digits(index % self.cell_count)
        elif self.strategy == "rotate":
            digits = self._rotate_digits(index)
        else:
            digits = self._digits(self._weighted_position(index))
        return self._cell_of(digits)

    def planned_counts(self) -> dict[str, int]:
        """How many of the planned requests (indices 0..requests-1) each cell gets, by `cell_key`, in the order of
        the cells' first request. Cross and weighted are counted from the strategy's own arithmetic; rotate, whose
        cells far outnumber a job's requests, by walking the indices."""
        if not self.names:
            return {cell_key({}): self.requests}
        counts: dict[str, int] = {}
        if self.strategy == "cross":
            rounds, rest = divmod(self.requests, self.cell_count)
            for position in range(min(self.cell_count, self.requests)):
                counts[cell_key(self._cell_of(self._cross_digits(position)))] = rounds + (position < rest)
        elif self.strategy == "weighted":  # a cell's first slot sits at 1 / 2n: the most requests first
            weighted = self._weighted_counts
            for position in sorted((p for p, n in enumerate(weighted) if n), key=lambda p: (-weighted[p], p)):
                counts[cell_key(self._cell_of(self._digits(position)))] = weighted[position]
        else:
            return super().planned_counts()
        return counts

    def _cell_of(self, digits: list[int]) -> dict[str, Any]:
        return {name: values[d] for name, values, d in zip(self.names, self.values, digits, strict=True)}

    def _digits(self, position: int) -> list[int]:
        digits = []
        for size in self.sizes:
            position, digit = divmod(position, size)
            digits.append(digit)
        return digits

    def _cross_digits(self, position: int) -> list[int]:
        running = 0
        out = []
        for raw, size in zip(self._digits(position), self.sizes, strict=True):
            running += raw
            out.append(running % size)
        return out

    def _rotate_digits(self, index: int) -> list[int]:
        out = []
        cycle = 1
        for position, size in enumerate(self.sizes):
            shift = index // (size * cycle) if position else 0
            out.append((index + shift) % size)
            cycle = math.lcm(cycle, size)
        return out

    @cached_property
    def _weighted_counts(self) -> tuple[int, ...]:
        """Requests per cell position (lexicographic, first axis fastest): its weight's share, largest remainder."""
        weights = [self._cell_weight(self._digits(p)) for p in range(self.cell_count)]
        total = sum(weights)
        if total == 0:
            weights, total = [Fraction(1)] * self.cell_count, Fraction(self.cell_count)
        quotas = [w * self.requests / total for w in weights]
        counts = [int(q) for q in quotas]
        spare = self.requests - sum(counts)
        by_remainder = sorted(range(len(quotas)), key=lambda p: (-(quotas[p] - counts[p]), p))
        for p in by_remainder[:spare]:
            counts[p] += 1
        return tuple(counts)

    def _weighted_position(self, index: int) -> int:
        """The cell position of request `index`, from the block of the weighted order that holds it."""
        total = self.requests  # the counts add up to it
        if total == 0:
            return 0
        k = index % total
        start = self._block_start
        if not start <= k < start + len(self._block):
            start = k - k % self.block_size
            self._block_start, self._block = start, self._weighted_slice(start, min(start + self.block_size, total))
        return self._block[k - start]

    def _weighted_slice(self, lo: int, hi: int) -> list[int]:
        """Positions lo..hi-1 of the weighted order, found without sorting the whole of it.

        Slot j of a cell with n requests sits at (2j + 1) / 2n; the order sorts every slot by that value, then by
        cell, so the cells are interleaved evenly. Floats order these exactly and fast: distinct fractions with
        denominators up to 2n differ far above double precision. A cell has at most nx + 1/2 slots at or below x
        and at least nx - 1/2 below it, so over c cells and N requests the slot at position k lies in
        [(2k + 2 - c) / 2N, (2k + c) / 2N]. Only the slots of that window are sorted; those below it are counted.
        Memory and time are O(hi - lo + cells), whatever N is.
        """
        counts = self._weighted_counts
        total, cells = self.requests, sum(1 for n in counts if n)
        low, high, twice = 2 * lo + 2 - cells, 2 * (hi - 1) + cells, 2 * total  # the window is [low, high] / 2N
        below, slots = 0, list[tuple[float, int]]()
        for p, n in enumerate(counts):
            if n:
                first = min(n, max(0, -((total - low * n) // twice)))  # slots with (2j + 1) / 2n < low / 2N
                last = min(n, max(0, (high * n - total) // twice + 1))  # slots with (2j + 1) / 2n <= high / 2N
                below += first
                slots.extend(((2 * j + 1) / (2 * n), p) for j in range(first, last))
        slots.sort()
        return [p for _, p in slots[lo - below : hi - below]]

    def _cell_weight(self, digits: list[int]) -> Fraction:
        weight = Fraction(1)
        for name, values, d in zip(self.names, self.values, digits, strict=True):
            key = str(values[d]).lower() if isinstance(values[d], bool) else str(values[d])
            weight *= Fraction(str(self._axes.weights.get(name, {}).get(key, 1)))
        return weight


class VariantPlan:
    """All variants of one stage; `variant(i)` is O(1) (weighted axes: O(cells) per block of the order).

    `sparse`: only scattered indices will be asked for (a plan's sample), so the weighted order is searched one
    position at a time instead of a block of 4,096 at a time.
    """

    def __init__(self, spec: JobSpec, stage: ResolvedStage, source_count: int | None = None, *,
                 sparse: bool = False, source_cells: Sequence[Mapping[str, Any]] | None = None,
                 shown: Mapping[int, tuple[int, ...]] | None = None):
        self.stage = stage
        self.shown = shown
        self.count = request_count(spec, stage)
        if stage.judges and source_count:
            self.count = -(-source_count // stage.examples_per_request)
        self.cells = CellPlan(spec.axes, self.count, 1 if sparse else 4096)
        self.seed_count = len(spec.seeds)
        self.source_count = source_count
        self.by_cell = (SourcesByCell(source_cells, stage.examples_per_request, self.count)
                        if stage.source is not None and source_cells and not stage.judges else None)

    def variant(self, index: int) -> Variant:
        """Variant `index`: 0..count-1 are the stage's plan; later indices continue every rotation (top-ups)."""
        if index < 0:
            raise IndexError(f"variant {index} of stage {self.stage.name!r} is negative")
        stage = self.stage
        k = stage.seeds_per_request if self.seed_count else 0
        seeds: tuple[int, ...] = ()
        if k:
            start = index * k + (index * k) // self.seed_count  # one seed further after each full pass
            seeds = tuple((start + j) % self.seed_count for j in range(k))
        sources: tuple[int, ...] = ()
        if stage.judges:
            n, e = self.source_count or 0, stage.examples_per_request
            shows = self.shown[index] if self.shown is not None else tuple(range(index * e, min(index * e + e, n)))
            return Variant(index, {}, seeds, stage.temperatures[index % len(stage.temperatures)], shows)
        if self.by_cell is not None:
            cell, sources = self.by_cell.variant(index)
        else:
            cell = self.cells.cell(index)
            if stage.source is not None:
                n, e = self.source_count or 0, stage.examples_per_request
                sources = tuple((index * e + j) % n for j in range(e)) if n else ()
        temperature = stage.temperatures[index % len(stage.temperatures)]
        return Variant(index, cell, seeds, temperature, sources)

    def variants(self, indices: Iterable[int] | None = None) -> Iterator[Variant]:
        """The variants in index order (or the given indices, sorted and deduplicated)."""
        chosen: Iterable[int] = range(self.count) if indices is None else sorted(set(indices))
        return (self.variant(i) for i in chosen)


class SourcesByCell(_CellIndexing):
    """The requests of an evolved stage whose sources' cells are known: each request evolves sources of one cell
    and carries that cell, so that a child keeps its parent's cell (see the module docstring)."""

    def __init__(self, cells: Sequence[Mapping[str, Any]], per_request: int, requests: int = 0):
        self.requests = requests
        groups: dict[str, list[int]] = {}
        self.cell_of: dict[str, dict[str, Any]] = {}
        for index, cell in enumerate(cells):
            key = json.dumps(cell, sort_keys=True)
            groups.setdefault(key, []).append(index)
            self.cell_of.setdefault(key, dict(cell))
        self.groups = list(groups.items())
        self.per_request = per_request
        chunks = [math.ceil(len(members) / per_request) for _, members in self.groups]
        self.chunks = chunks
        # One pass over the sources: the cells take turns, chunk k of every cell before chunk k + 1 of any.
        self.order = [(g, k) for k in range(max(chunks)) for g in range(len(chunks)) if k < chunks[g]]

    def variant(self, index: int) -> tuple[dict[str, Any], tuple[int, ...]]:
        """(cell, source indices) of request `index`; later passes go on round each cell's sources."""
        passes, slot = divmod(index, len(self.order))
        group, chunk = self.order[slot]
        key, members = self.groups[group]
        turn = passes * self.chunks[group] + chunk
        e, n = self.per_request, len(members)
        return dict(self.cell_of[key]), tuple(members[(turn * e + j) % n] for j in range(e))

    def cell(self, index: int) -> dict[str, Any]:
        return self.variant(index)[0]

    def planned_counts(self) -> dict[str, int]:
        """Requests per cell over indices 0..requests-1: each full pass over the sources gives a cell its chunks."""
        passes, rest = divmod(self.requests, len(self.order))
        counts = {key: passes * chunks for (key, _), chunks in zip(self.groups, self.chunks, strict=True)}
        for group, _ in self.order[:rest]:
            counts[self.groups[group][0]] += 1
        return {key: counts[key] for key, _ in self.groups if counts[key]}  # the first pass goes in group order


def expand_variants(
    spec: JobSpec,
    stage: ResolvedStage | str | None = None,
    *,
    indices: Iterable[int] | None = None,
    source_count: int | None = None,
) -> Iterator[Variant]:
    """Variants of a stage, streamed (see the module docstring for the rules)."""
    resolved = stage if isinstance(stage, ResolvedStage) else spec.stage(stage)
    return VariantPlan(spec, resolved, source_count).variants(indices)


def cell_key(cell: Mapping[str, Any]) -> str:
    """A cell as the ledger records it (`requests.cell_json`): its JSON, keys sorted."""
    return json.dumps(dict(cell), sort_keys=True)


def cell_assigner(spec: JobSpec, stage: ResolvedStage,
                  source_cells: Sequence[Mapping[str, Any]] | None = None) -> CellPlan | SourcesByCell:
    """What gives the stage's request indices their cells: the axes, or for an evolved stage whose sources' cells
    are known (`source_cells`), those cells."""
    count = request_count(spec, stage)
    if stage.source is not None and source_cells:
        return SourcesByCell(source_cells, stage.examples_per_request, count)
    return CellPlan(spec.axes, count)


def cell_shares(spec: JobSpec, stage: ResolvedStage,
                source_cells: Sequence[Mapping[str, Any]] | None = None) -> dict[str, int]:
    """Each cell's share of the stage's target, by `cell_key`: floor(target x its planned requests / the stage's
    planned requests). The shares add up to the target at most; what they leave (the rounding) goes to any cell.
    An evolved stage's cells are its sources' (`source_cells`), when known."""
    count = request_count(spec, stage)
    planned = cell_assigner(spec, stage, source_cells).planned_counts()
    return {key: stage.target * n // count for key, n in planned.items()}


def coverage(variants: Iterable[Variant]) -> dict[tuple[tuple[str, Any], ...], int]:
    """How many requests each cell gets."""
    counts: dict[tuple[tuple[str, Any], ...], int] = {}
    for variant in variants:
        counts[variant.cell_key] = counts.get(variant.cell_key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: repr(kv[0])))


__all__ = ["Variant", "VariantPlan", "CellPlan", "SourcesByCell", "MAX_JOB_REQUESTS", "request_count",
           "job_request_count", "expand_variants", "coverage", "cell_key", "cell_shares", "cell_assigner"]
