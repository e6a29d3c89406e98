"""A check of OpenAI's chat fine-tuning format, written after the validation script OpenAI publishes in its cookbook
("Data preparation and analysis for chat model fine-tuning"), and kept apart from batchgen's own export code so that
it judges the files the way an outsider would.

The cookbook's checks, with its error names: each line a JSON object (data_type), a `messages` list
(missing_messages_list), each message with `role` and `content` (message_missing_key) and no other key than the
documented ones (message_unrecognized_key), a known role (unrecognized_role), content a non-empty string
(missing_content), an assistant message in every example (example_missing_assistant_message). From the fine-tuning
guide's format: no top-level key but `messages`, `tools`, `parallel_tool_calls` (unrecognized_key), `weight` only on
an assistant message and 0 or 1 (bad_weight). Then the script's token count per example (3 tokens a message, every
value, 1 more for a name, 3 for the reply), the examples over the training context (n_too_long) and the count of
examples against OpenAI's minimum of 10.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.recipe.tokens import get_encoding

TOP_LEVEL_KEYS = {"messages", "tools", "parallel_tool_calls"}
MESSAGE_KEYS = {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"}
ROLES = {"system", "user", "assistant", "function", "tool"}
MINIMUM_EXAMPLES = 10


@dataclass
class FormatReport:
    """What the check found in one file: error counts by the cookbook's names, tokens per example."""

    examples: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)
    too_long: int = 0

    @property
    def passes(self) -> bool:
        return not self.errors and self.too_long == 0 and self.examples >= MINIMUM_EXAMPLES


def check_file(path: Path, context_tokens: int, encoding: str = "o200k_base") -> FormatReport:
    """Check a training file line by line for a model of `context_tokens` training context."""
    report = FormatReport()
    enc = get_encoding(encoding)
    for raw in path.read_text(encoding="utf-8").splitlines():
        report.examples += 1
        example = json.loads(raw)
        if not isinstance(example, dict):
            report.errors["data_type"] += 1
            continue
        if set(example) - TOP_LEVEL_KEYS:
            report.errors["unrecognized_key"] += 1
        messages = example.get("messages")
        if not messages or not isinstance(messages, list):
            report.errors["missing_messages_list"] += 1
            continue
        for message in messages:
            _check_message(message, report)
        if not any(message.get("role") == "assistant" for message in messages):
            report.errors["example_missing_assistant_message"] += 1
        tokens = _count(messages, enc)
        report.tokens.append(tokens)
        report.too_long += tokens > context_tokens
    return report


def _check_message(message: dict[str, Any], report: FormatReport) -> None:
    if "role" not in message or "content" not in message:
        report.errors["message_missing_key"] += 1
    if any(key not in MESSAGE_KEYS for key in message):
        report.errors["message_unrecognized_key"] += 1
    if message.get("role") not in ROLES:
        report.errors["unrecognized_role"] += 1
    content, call = message.get("content"), message.get("function_call") or message.get("tool_calls")
    if (not content and not call) or not isinstance(content, str):
        report.errors["missing_content"] += 1
    if "weight" in message and (message.get("role") != "assistant" or message["weight"] not in (0, 1)):
        report.errors["bad_weight"] += 1


def _count(messages: list[dict[str, Any]], enc: Any) -> int:
    """The cookbook's num_tokens_from_messages, with the model's encoding."""
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(enc.encode(str(value)))
            if key == "name":
                total += 1
    return total + 3
