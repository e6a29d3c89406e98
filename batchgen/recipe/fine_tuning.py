"""What OpenAI's supervised fine-tuning of a chat model takes: how long one training example may be, and how few.

A ChatML export is meant to be uploaded as it is for fine-tuning. OpenAI truncates an example longer than the
model's training context (which keeps the prompt and cuts the answer), and refuses a training file of fewer than
10 examples. The limits come from a small table with its sources, `batchgen/data/fine_tuning.toml`; an example
is counted the way OpenAI's data-preparation script counts it (`tokens.count_messages`: 3 tokens a message, its
role and content, 3 for the reply), with the model's own tokenizer.

A job names a model by its alias (gpt-4o-mini); the fine-tuning API takes a snapshot (gpt-4o-mini-2024-07-18),
which the table's aliases give. A fine-tune (ft:gpt-4o-mini-2024-07-18:acme::abc123) can be fine-tuned again,
within the context of the snapshot it was made from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from batchgen.recipe.tokens import count_messages

MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer (its fine-tuning guide, "Right number of examples")


@dataclass(frozen=True)
class TrainingContext:
    """The longest training example a model's fine-tuning takes, and where the figure comes from."""

    model: str  # as the job or the user named it
    snapshot: str  # the fine-tunable snapshot whose entry applies
    tokens: int
    source: str


def training_context(model: str) -> TrainingContext | None:
    """The training context of `model`, or None when the table does not know the model."""
    table, aliases, sources = _table()
    snapshot = _snapshot(model)
    snapshot = aliases.get(snapshot, snapshot)
    if snapshot not in table:
        return None
    tokens, source = table[snapshot]
    return TrainingContext(model, snapshot, tokens, sources.get(source, source))


def fine_tunable_models() -> list[str]:
    """The names the table knows (aliases first), for a message that lists what can be asked for."""
    table, aliases, _ = _table()
    return [*aliases, *table]


def example_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """The tokens one training example counts for fine-tuning `model`."""
    return count_messages(messages, model)


def _snapshot(model: str) -> str:
    """The model a fine-tune was made from (ft:<base>:<org>:<suffix>:<id>), or the model itself."""
    return model.removeprefix("ft:").split(":", 1)[0] if model.startswith("ft:") else model


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, tuple[int, str]], dict[str, str], dict[str, str]]:
    text = files("batchgen").joinpath("data", "fine_tuning.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    table = {str(name): (int(entry["tokens"]), str(entry["source"])) for name, entry in data["models"].items()}
    return table, {str(k): str(v) for k, v in data["aliases"].items()}, {str(k): str(v) for k, v in
                                                                          data["sources"].items()}
