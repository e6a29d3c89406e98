"""A ChatML export as OpenAI's fine-tuning reads it: each line checked the way OpenAI's data-preparation script
checks a training file, and the file summed up (pure, no I/O).

The export writes documented keys only (`messages` of `role` and `content`), so what is left to check is what
the content decides: every example needs an assistant message to learn from and no empty message, and must fit
the model's training context (`recipe/fine_tuning`). An example that fails is left out of the file with its
reason rather than truncated or refused by the fine-tuning job. A file under OpenAI's minimum count gets a
warning: it is still the dataset, only not one a fine-tuning job takes alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchgen.recipe.fine_tuning import MIN_EXAMPLES, TrainingContext, example_tokens, fine_tunable_models


@dataclass
class TrainingFileCheck:
    """Checks the lines of one ChatML export for fine-tuning `model`, and keeps their token counts."""

    model: str
    context: TrainingContext | None
    lengths: Counter[int] = field(default_factory=Counter)  # examples that fit, by their tokens (bounded by the
    #                                                            context, so a large export stays small here)

    @property
    def examples(self) -> int:
        return sum(self.lengths.values())

    def problem(self, example: Mapping[str, Any]) -> tuple[str, str] | None:
        """(category, reason) when fine-tuning would refuse or truncate `example`; None when it fits (and is
        counted)."""
        messages = example["messages"]
        if not any(message["role"] == "assistant" for message in messages):
            return "not_fine_tunable", "no assistant message: fine-tuning has nothing to learn from it"
        if any(not message["content"] for message in messages):
            return "not_fine_tunable", "an empty message: fine-tuning takes every message with content"
        tokens = example_tokens(messages, self.model)
        if self.context is not None and tokens > self.context.tokens:
            return "over_context", (f"{tokens:,} tokens, over the {self.context.tokens:,} of {self.model}'s "
                                    "fine-tuning context (OpenAI would truncate it)")
        self.lengths[tokens] += 1
        return None

    def warnings(self) -> list[str]:
        """What a user should know before uploading the file for fine-tuning."""
        found = []
        if self.examples < MIN_EXAMPLES:
            found.append(f"{self.examples} example(s): OpenAI's fine-tuning takes a training file of at least "
                         f"{MIN_EXAMPLES}")
        if self.context is None:
            found.append(f"No fine-tuning context known for {self.model}, so no example was checked against one; "
                         f"name a model OpenAI fine-tunes with --fine-tune-model "
                         f"({', '.join(fine_tunable_models()[:6])}, ...)")
        return found

    def to_dict(self) -> dict[str, Any]:
        """The figures a dataset card and `export --json` show: the model, its context, tokens per example."""
        return {"model": self.model,
                "snapshot": self.context.snapshot if self.context else None,
                "context_tokens": self.context.tokens if self.context else None,
                "context_source": self.context.source if self.context else None,
                "min_examples": MIN_EXAMPLES,
                "tokens": {"total": sum(tokens * n for tokens, n in self.lengths.items()),
                           "min": min(self.lengths, default=0), "median": self._median(),
                           "max": max(self.lengths, default=0)},
                "warnings": self.warnings()}

    def _median(self) -> int:
        """The middle example's tokens (the upper one of an even count); 0 for none."""
        middle, seen = self.examples // 2, 0
        for tokens in sorted(self.lengths):
            seen += self.lengths[tokens]
            if seen > middle:
                return tokens
        return 0
