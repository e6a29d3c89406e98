"""Time parse + validate + dedupe over a synthetic set of responses (default: 50,000 responses x 10 examples).

    python scripts/bench_validate.py [--responses N] [--per-response K] [--format sharegpt|chatml|alpaca]

About 2% of the examples are broken in the ways the lesson reports (wrong role order, off-format replies) and
1% repeat an earlier one, so every path of the validator is exercised, not only the happy one.
"""

from __future__ import annotations

import argparse
import resource
import time

import orjson

from batchgen.dataset.validate import Deduper, Rules, Summary, validate_response
from batchgen.recipe.formats import Turn, from_turns

PATTERNS = ["Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:", "tasks found"]
VERBS = ["Create", "Update", "Complete", "Delete"]


def make_example(n: int, fmt: str) -> dict[str, object]:
    """A Task API example; every 50th breaks the role order or the reply format, every 100th repeats."""
    n = n - 1 if n % 100 == 99 else n
    verb = VERBS[n % 4]
    user = Turn(role="user", content=f"{verb} the task number {n}: review the budget ünïcode 予算 by Friday")
    reply = f"{verb}d task: 'Task {n}' | Priority: medium | Due: 2025-01-17"
    if n % 50 == 7:
        reply = f"Sure! I did that for task {n}."
    turns = [user, Turn(role="assistant", content=reply)]
    if n % 50 == 13 and fmt != "alpaca":
        turns = [user, user]
    return from_turns(turns, fmt)


def make_responses(count: int, per: int, fmt: str) -> list[str]:
    return [orjson.dumps({"examples": [make_example(i * per + j, fmt) for j in range(per)]}).decode()
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=50_000)
    parser.add_argument("--per-response", type=int, default=10)
    parser.add_argument("--format", default="sharegpt", choices=["sharegpt", "chatml", "alpaca"])
    parser.add_argument("--dedupe", default="exact", choices=["exact", "normalized", "none"])
    args = parser.parse_args()
    responses = make_responses(args.responses, args.per_response, args.format)
    rules = Rules.from_values(patterns=PATTERNS, dedupe=args.dedupe)
    deduper = Deduper.for_rules(rules, args.format)
    summary = Summary()
    start = time.perf_counter()
    for index, content in enumerate(responses):
        summary.add_response(validate_response(content, "stop", args.format, rules, deduper,
                                               custom_id=f"req-{index}"))
    elapsed = time.perf_counter() - start
    examples = summary.total
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(summary.render())
    print(f"{args.responses} responses, {examples} examples ({args.format}, dedupe={args.dedupe}): "
          f"{elapsed:.2f} s, {elapsed / examples * 1e6:.2f} us/example, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
