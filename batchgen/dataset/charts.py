"""The geometry of the HTML report's charts, drawn by its template as small hand-written SVG.

A few bars, a grid of coloured cells and a column per day need no charting library: each is a handful of rects
whose sizes are computed here, so the page stays one file with nothing to load, and the template (autoescaped)
writes every label. Sizes are plain numbers in the SVG's own units; colours are hex text computed from figures,
never from model output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

BAR_WIDTH = 100  # a bar's SVG is 100 units wide, stretched to its table cell
_LOW, _MID, _HIGH = (215, 48, 39), (254, 224, 139), (26, 152, 80)  # red, yellow, green (ColorBrewer RdYlGn)
EMPTY = "#d9d9d9"  # a cell with no share and no examples


def bar_lengths(values: Sequence[Decimal | int | float | None]) -> list[float]:
    """Each value's bar length out of BAR_WIDTH, the largest value filling it (all 0 when nothing is above 0)."""
    top = max((Decimal(str(v)) for v in values if v is not None), default=Decimal(0))
    if top <= 0:
        return [0.0 for _ in values]
    return [0.0 if v is None or v <= 0 else round(float(Decimal(str(v)) * BAR_WIDTH / top), 2) for v in values]


def colour(ratio: float | None) -> str:
    """Green for a cell at its share (or above); below it, from red (nothing) to yellow (nearly there), so that a
    thin cell never passes for a full one."""
    if ratio is None:
        return EMPTY
    if ratio >= 1:
        return "#" + "".join(f"{c:02x}" for c in _HIGH)
    t = max(ratio, 0.0)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(_LOW, _MID, strict=True))


@dataclass
class HeatCell:
    x: int
    y: int
    fill: str
    label: str  # "valid/share"
    title: str  # the cell and its figures, shown on hover


@dataclass
class Heatmap:
    """A stage's cells as a grid: one row per value of the first axis, one column per combination of the others."""

    rows: list[str]
    columns: list[str]
    cells: list[HeatCell] = field(default_factory=list)
    down: str = ""  # the axis of the rows ("" for none)
    across: str = ""  # the axes of the columns, joined
    cell_width: int = 64
    cell_height: int = 30
    left: int = 120  # room for the row labels

    @property
    def top(self) -> int:
        """Room for the column labels, turned 40 degrees: about 6 units a character, sin 40 of it upwards."""
        return 16 + round(6 * 0.65 * max((len(column) for column in self.columns), default=0))

    @property
    def width(self) -> int:
        return self.left + self.cell_width * max(len(self.columns), 1) + 90  # the last label, turned, runs right

    @property
    def height(self) -> int:
        return self.top + self.cell_height * max(len(self.rows), 1) + 10


def heatmap(cells: Iterable[Mapping[str, Any]], axes: Sequence[str]) -> Heatmap:
    """The grid of a stage's cells ({"cell", "share", "valid", ...} each), its first axis down, the rest across; one
    axis alone goes across, in one row named after it."""
    cells = list(cells)
    names = list(dict.fromkeys([*axes, *(axis for cell in cells for axis in cell["cell"])]))
    down, across = (names[0], names[1:]) if len(names) > 1 else (None, names)
    rows: dict[str, int] = {}
    columns: dict[str, int] = {}
    grid = Heatmap([], [])
    for cell in cells:
        values = cell["cell"]
        row = _value(values, down) if down else (across[0] if across else "(all)")
        column = " \u00b7 ".join(_value(values, axis) for axis in across) or "examples"
        y = rows.setdefault(row, len(rows))
        x = columns.setdefault(column, len(columns))
        share, valid = cell["share"], cell["valid"]
        ratio = valid / share if share else (1.0 if valid else None)
        title = f"{row} {column}: {valid} valid of a share of {share}, {cell['requests']} requests"
        grid.cells.append(HeatCell(x, y, colour(ratio), f"{valid}/{share}", title))
    grid.rows, grid.columns = list(rows), list(columns)
    grid.down, grid.across = down or "", " \u00b7 ".join(across)
    return grid


def cell_label(cell: Mapping[str, Any], axes: Sequence[str] = ()) -> str:
    """A cell as people read it: `create · formal · false` (its values, those of `axes` first in that order),
    `(all)` for a job without axes."""
    names = dict.fromkeys([*(axis for axis in axes if axis in cell), *cell])
    return " \u00b7 ".join(_value(cell, axis) for axis in names) or "(all)"


def _value(cell: Mapping[str, Any], axis: str | None) -> str:
    if axis is None or axis not in cell:
        return "-"
    value = cell[axis]
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Column:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str


def columns(items: Sequence[tuple[str, Decimal]], value_text: Any, width: int = 320,
            height: int = 120) -> list[Column]:
    """One column per (label, amount), side by side in a `width` x `height` area, the largest reaching the top."""
    if not items:
        return []
    step = min(width / len(items), 48)  # a day or two stay thin columns, not a wall
    lengths = bar_lengths([amount for _, amount in items])
    return [Column(round(i * step + step * 0.15, 2), round(height - length * height / BAR_WIDTH, 2),
                   round(step * 0.7, 2), round(length * height / BAR_WIDTH, 2), label, value_text(amount))
            for i, ((label, amount), length) in enumerate(zip(items, lengths, strict=True))]
