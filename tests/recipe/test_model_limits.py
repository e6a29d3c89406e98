"""Output-token limits: the table, and how snapshots and fine-tunes find their model's entry."""

from __future__ import annotations

import pytest

from batchgen.recipe.model_limits import OutputLimit, _table, output_limit


@pytest.mark.parametrize(("model", "limit"), [
    ("gpt-4o-mini", OutputLimit("gpt-4o-mini", 16_384)),
    ("gpt-4o-mini-2024-07-18", OutputLimit("gpt-4o-mini", 16_384)),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", OutputLimit("gpt-4o-mini", 16_384)),
    ("gpt-4o-2024-05-13", OutputLimit("gpt-4o-2024-05-13", 4_096)),  # its own entry wins over gpt-4o's
    ("gpt-4o-2024-08-06", OutputLimit("gpt-4o", 16_384)),
    ("o3-2025-04-16", OutputLimit("o3", 100_000)),
    ("gpt-5-pro", OutputLimit("gpt-5-pro", 272_000)),
    ("gpt-6-sol", None),  # not in the table: not checked
    ("gpt-4o-mini-search-preview", None),  # another model, not a snapshot of gpt-4o-mini
])
def test_output_limit(model: str, limit: OutputLimit | None) -> None:
    assert output_limit(model) == limit


def test_the_table_holds_positive_token_counts() -> None:
    table = _table()
    assert len(table) >= 25 and all(tokens > 0 for tokens in table.values())
