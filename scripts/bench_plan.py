#!/usr/bin/env python
"""Benchmark: `batchgen plan` at growing targets; wall time and peak RSS of a fresh process per run.

    python scripts/bench_plan.py                           # 20,000 to 5,000,000 requests, 5 runs each
    python scripts/bench_plan.py --requests 50000 1250000 --runs 3
    python scripts/bench_plan.py --weighted                # axes with the weighted strategy
    python scripts/bench_plan.py --compare 50000           # also plan with --exact once, and compare

The job is the one of scripts/bench_compile.py: 5 seed examples per prompt rotated through a pool of 1,000
distinct seeds, about 1,000 prompt tokens per request, 5 x 4 x 2 axis cells, 3 temperatures, gpt-4o-mini,
structured output; its target is set so that the plan has exactly the given number of requests. Each run is
`python -m batchgen plan JOB --json` in its own process, as a user runs it (interpreter start, imports, the
tokenizer and the job's load included); its peak RSS is read with resource.getrusage(RUSAGE_CHILDREN) in an
intermediate process that runs only that child. Up to 20,000 requests the plan renders and counts every
request; beyond it, a sample of 2,000 (the plan says which).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_compile import machine, make_job

WEIGHTED = """
[axes]
strategy = "weighted"
[axes.weights]
operation = { create = 3, update = 2, list = 0.5 }
include_errors = { true = 1, false = 3 }
"""


def measure(job: str, exact: bool) -> None:
    """Run one plan and report its wall time and peak RSS (this process has no other children)."""
    flags = ["--exact"] if exact else []
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batchgen", "plan", job, "--json", *flags], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - started
    plan = json.loads(done.stdout)
    print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "requests": plan["requests"], "counted": plan["counted"], "input_tokens": plan["input_tokens"],
                      "batch_expected": plan["cost_usd"]["batch_expected"]}))


def run_once(job: Path, exact: bool = False) -> dict[str, Any]:
    flags = ["--measure-exact"] if exact else []
    out = subprocess.run([sys.executable, __file__, "--measure", str(job), *flags], capture_output=True, text=True,
                         check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def weighted(job: Path) -> None:
    toml = job / "job.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(text.replace("[axes.values]", WEIGHTED.strip() + "\n[axes.values]"), encoding="utf-8")


def report(requests: int, runs: list[dict[str, Any]], label: str) -> None:
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
    counted = runs[0]["counted"]
    how = "exact" if counted["exact"] else f"sampled {counted['rendered']:,}"
    print(f"{requests:>9,} requests{label}: wall median {statistics.median(r['wall_s'] for r in runs):.2f} s "
          f"(runs {walls}), peak RSS median {statistics.median(r['peak_rss_mb'] for r in runs):.0f} MB; {how}; "
          f"{runs[0]['input_tokens']:,} input tokens, ${runs[0]['batch_expected']} expected", flush=True)


def compare(job: Path, requests: int, sampled: dict[str, Any]) -> None:
    exact = run_once(job, exact=True)
    error = sampled["input_tokens"] / exact["input_tokens"] - 1
    print(f"{requests:>9,} requests --exact: wall {exact['wall_s']:.2f} s, peak RSS {exact['peak_rss_mb']:.0f} MB; "
          f"{exact['input_tokens']:,} input tokens; the sample's estimate is off by {error:+.4%} (stated margin "
          f"±{sampled['counted']['input_tokens_margin'] / sampled['input_tokens']:.3%})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[20_000, 50_000, 1_250_000, 5_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--weighted", action="store_true", help="spread the requests with the weighted strategy")
    parser.add_argument("--compare", type=int, nargs="*", default=[], metavar="REQUESTS",
                        help="at these sizes also plan once with --exact and compare")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.measure_exact)
    print(f"machine: {machine()}")
    for requests in args.requests:
        with tempfile.TemporaryDirectory(prefix="bench_plan_") as tmp:
            job = make_job(Path(tmp), requests, unique=False)
            if args.weighted:
                weighted(job)
            runs = [run_once(job) for _ in range(args.runs)]
            report(requests, runs, " (weighted)" if args.weighted else "")
            if requests in args.compare:
                compare(job, requests, runs[0])


if __name__ == "__main__":
    main()
