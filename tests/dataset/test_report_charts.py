"""The geometry of the HTML report's charts (`batchgen.dataset.charts`), by hand."""

from __future__ import annotations

from decimal import Decimal

from batchgen.dataset.charts import EMPTY, bar_lengths, cell_label, colour, columns, heatmap


def test_bars_are_on_one_scale_the_largest_full() -> None:
    assert bar_lengths([Decimal("0.5"), Decimal("1"), None, 0]) == [50.0, 100.0, 0.0, 0.0]
    assert bar_lengths([0, None]) == [0.0, 0.0]
    assert bar_lengths([3, 1]) == [100.0, 33.33]


def test_only_a_cell_at_its_share_is_green() -> None:
    assert colour(1.0) == colour(1.5) == "#1a9850"
    assert colour(0.0) == "#d73027" and colour(0.999) != "#1a9850"
    assert colour(None) == EMPTY
    assert colour(0.5) == "#ea8859"  # half way from red (215, 48, 39) to yellow (254, 224, 139): 234, 136, 89


def test_the_heatmap_puts_the_first_axis_down_and_the_rest_across() -> None:
    cells = [{"cell": {"op": op, "style": style, "errors": errors}, "share": 10, "valid": valid, "requests": 1}
             for (op, style, errors, valid) in [("create", "formal", False, 10), ("create", "casual", True, 5),
                                                ("list", "formal", False, 0)]]
    grid = heatmap(cells, ["op", "style", "errors"])
    assert grid.rows == ["create", "list"] and grid.columns == ["formal \u00b7 false", "casual \u00b7 true"]
    assert (grid.down, grid.across) == ("op", "style \u00b7 errors")
    assert [(c.x, c.y, c.label) for c in grid.cells] == [(0, 0, "10/10"), (1, 0, "5/10"), (0, 1, "0/10")]
    assert [c.fill for c in grid.cells] == [colour(1.0), colour(0.5), colour(0.0)]


def test_one_axis_goes_across_in_one_row() -> None:
    cells = [{"cell": {"op": op}, "share": 25, "valid": 30, "requests": 3} for op in ("create", "list")]
    grid = heatmap(cells, ["op"])
    assert grid.rows == ["op"] and grid.columns == ["create", "list"] and (grid.down, grid.across) == ("", "op")


def test_a_cell_reads_in_the_axes_order() -> None:
    assert cell_label({"errors": True, "op": "create"}, ["op", "errors"]) == "create \u00b7 true"
    assert cell_label({}) == "(all)"


def test_columns_by_day_stand_on_one_base() -> None:
    found = columns([("2026-12-01", Decimal("1")), ("2026-12-02", Decimal("0.25"))], str, width=320, height=120)
    assert [(c.height, c.y) for c in found] == [(120.0, 0.0), (30.0, 90.0)]
    assert found[0].width == found[1].width == 33.6 and found[1].x - found[0].x == 48
