"""Judge the lines of downloaded output and error files: parse each, and validate what a success generated.

`judge_line` is pure (bytes in, a plain tuple out) and knows nothing of the ledger. (Judging in worker processes
was measured and dropped: shipping the judged examples back cost more than the judging saved.)

A judged line is one of:
  ("ok", custom_id, status_code, request_id, finish_reason, prompt, cached, completion, reasoning,
         response_reason | None, [example, ...])        example = (raw_json | None, hash | None, valid, category,
                                                                   reason | None)
  ("error", custom_id, status_code | None, code, message, request_id | None)
  ("corrupt", line_number, message)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from batchgen.validate import Rules, judge_examples, parse_response

Judged = tuple[Any, ...]


def judge_line(line: bytes, number: int, fmt: str, rules: Rules) -> Judged:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return ("corrupt", number, str(error))
    if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
        return ("corrupt", number, "not a batch result line")
    custom_id, response = row["custom_id"], row.get("response")
    if isinstance(response, dict) and 200 <= int(response.get("status_code") or 0) < 300:
        return _success(custom_id, response, fmt, rules)
    error = row.get("error") or {}
    if isinstance(response, dict):
        inner = (response.get("body") or {}).get("error") or {}
        return ("error", custom_id, response.get("status_code"), inner.get("code") or inner.get("type"),
                inner.get("message"), response.get("request_id"))
    return ("error", custom_id, None, error.get("code"), error.get("message"), None)


def _success(custom_id: str, response: dict[str, Any], fmt: str, rules: Rules) -> Judged:
    body = response.get("body") or {}
    usage = body.get("usage") or {}
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    parsed = parse_response(message.get("content"), finish, fmt, refusal=message.get("refusal"))
    reason = (parsed.reason.category, str(parsed.reason)) if parsed.reason is not None else None
    examples = judge_examples(parsed.examples, fmt, rules)
    return ("ok", custom_id, response.get("status_code"), response.get("request_id"), finish,
            int(usage.get("prompt_tokens") or 0),
            int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0), reason, examples)


def judged_lines(path: Path, fmt: str, rules: Rules) -> Iterator[Judged]:
    """Every non-empty line of a result file, judged, in file order (streamed: one line in memory at a time)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield judge_line(line, number, fmt, rules)
