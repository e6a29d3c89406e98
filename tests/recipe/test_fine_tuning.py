"""Fine-tuning limits: the table, and how aliases, snapshots and fine-tunes find their entry."""

from __future__ import annotations

import pytest

from batchgen.recipe.fine_tuning import (
    MIN_EXAMPLES,
    _table,
    example_tokens,
    fine_tunable_models,
    training_context,
)
from batchgen.recipe.tokens import encoding_name_for_model


@pytest.mark.parametrize(("model", "snapshot", "tokens"), [
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", 65_536),              # the job's alias: the snapshot OpenAI tunes
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", 65_536),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "gpt-4o-mini-2024-07-18", 65_536),  # a fine-tune, tuned again
    ("gpt-4o", "gpt-4o-2024-08-06", 65_536),
    ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613", 4_096),             # its own, smaller, training context
    ("gpt-3.5-turbo", "gpt-3.5-turbo-0125", 16_385),
    ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14", 32_768),
])
def test_training_context(model: str, snapshot: str, tokens: int) -> None:
    context = training_context(model)
    assert context is not None and (context.model, context.snapshot, context.tokens) == (model, snapshot, tokens)
    assert context.source.startswith(("OpenAI fine-tuning guide", "Azure OpenAI fine-tuning models"))


@pytest.mark.parametrize("model", ["gpt-5", "gpt-4o-2024-05-13", "gpt-4o-mini-search-preview", "o3"])
def test_a_model_the_table_does_not_know(model: str) -> None:
    assert training_context(model) is None


def test_every_entry_has_a_tokenizer_a_source_and_an_alias_target() -> None:
    table, aliases, sources = _table()
    assert MIN_EXAMPLES == 10 and len(table) >= 8
    for name, (tokens, source) in table.items():
        assert tokens > 0 and source in sources, name
        encoding_name_for_model(name)
    assert set(aliases.values()) <= set(table)
    assert fine_tunable_models()[:2] == ["gpt-4o", "gpt-4o-mini"]


def test_an_example_counts_as_openais_preparation_script_counts_it() -> None:
    """3 a message plus its role and content, 3 for the reply: the cookbook's num_tokens_from_messages."""
    messages = [{"role": "user", "content": "Add milk"}, {"role": "assistant", "content": "Created task: 'Milk'"}]
    assert example_tokens(messages, "gpt-4o-mini") == 3 + (1 + 2) + 3 + (1 + 6) + 3
