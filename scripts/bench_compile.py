#!/usr/bin/env python
"""Benchmark: compile a large job with exact token counts; wall time and peak RSS of a fresh process per run.

    python scripts/bench_compile.py                        # 50,000 and 1,000,000 requests, 3 runs each
    python scripts/bench_compile.py --requests 50000 --runs 5
    python scripts/bench_compile.py --unique               # every prompt distinct (worst case for tokenizing)

The job: 5 seed examples per prompt (rotated through a pool of 1,000 distinct seeds), about 1,000 prompt
tokens per request, 5 x 4 x 2 axis cells, 3 temperatures, gpt-4o-mini, structured output. Each run is a
subprocess (load the spec, render, count tokens, write shards and manifests); its peak RSS is read with
resource.getrusage(RUSAGE_CHILDREN) in an intermediate process that runs only that child. Shards are deleted
after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "budget report meeting invoice draft review call email plan launch sprint ticket design contract "
    "dentist flight hotel passport groceries gym rent insurance taxes garden laundry car battery printer "
    "slides agenda interview onboarding audit backup server release notes survey workshop"
).split()


def make_job(root: Path, requests: int, unique: bool) -> Path:
    """A job of `requests` requests with ~1,000 prompt tokens each."""
    job = root / "bench_job"
    job.mkdir(parents=True)
    rng = random.Random(7)
    with open(job / "seeds.jsonl", "w", encoding="utf-8") as out:
        for n in range(1000):
            title = " ".join(rng.choice(WORDS) for _ in range(4)).capitalize()
            ask = (
                f"Please add '{title}' for {rng.choice(['Monday', 'Friday', 'tomorrow'])}, "
                + " ".join(rng.choice(WORDS) for _ in range(100))
                + f" (ref {n})"
            )
            priority = rng.choice(["low", "medium", "high"])
            answer = f"Created task: '{title}' | Priority: {priority} | Due: 2025-02-{n % 28 + 1:02d}"
            out.write(
                json.dumps(
                    {"conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": answer}]}
                )
                + "\n"
            )
    (job / "prompt.j2").write_text(
        ("Request {{ index }}.\n" if unique else "")
        + "You are generating training examples for a Task API assistant.\n\n"
        + "## Examples\n{{ seed_examples }}\n\n"
        "## Your Task\nGenerate {{ count }} NEW examples about {{ operation }} in a {{ style }} style"
        '{% if include_errors %}, some of them error cases{% endif %}. Return JSON {"examples": [...]}.\n',
        encoding="utf-8",
    )
    (job / "job.toml").write_text(
        f"""name = "bench"
model = "gpt-4o-mini"
target = {requests * 10}
examples_per_request = 10
overgeneration = 1
[prompt]
system = "You generate training data in JSON format."
template = "prompt.j2"
seeds = "seeds.jsonl"
seeds_per_request = 5
temperature = [0.7, 0.9, 1.0]
max_tokens = 2000
[axes.values]
operation = ["create", "update", "complete", "delete", "list"]
style = ["formal", "casual", "imperative", "question"]
include_errors = [false, true]
""",
        encoding="utf-8",
    )
    return job


def child(job: str, workspace: str) -> None:
    """The measured process: load the spec and compile it."""
    from batchgen.ledger.workspace import Workspace
    from batchgen.recipe.compile import compile_stage
    from batchgen.recipe.loader import load_spec

    started = time.perf_counter()
    result = compile_stage(load_spec(job), shards_dir=Workspace(Path(workspace)).shards_dir)
    print(
        json.dumps(
            {
                "compile_s": time.perf_counter() - started,
                "requests": result.requests,
                "shards": len(result.shards),
                "input_tokens": result.input_tokens,
                "bytes": sum(s.bytes for s in result.shards),
            }
        )
    )


def measure(job: str, workspace: str) -> None:
    """Run one child and report its wall time and peak RSS (this process has no other children)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", job, workspace], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({**json.loads(done.stdout), "wall_s": wall, "peak_rss_mb": peak_kb / 1024}))


def run_once(job: Path, root: Path) -> dict[str, float]:
    workspace = root / "ws"
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(job), str(workspace)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(workspace, ignore_errors=True)
    return json.loads(out.stdout)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {cpu}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--unique", action="store_true", help="make every prompt distinct ({{ index }} in it)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.measure:
        return measure(*args.measure)
    print(f"machine: {machine()}")
    for requests in args.requests:
        with tempfile.TemporaryDirectory(prefix="bench_compile_") as tmp:
            root = Path(tmp)
            job = make_job(root, requests, args.unique)
            runs = [run_once(job, root) for _ in range(args.runs)]
        first = runs[0]
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in runs)
        label = " (unique prompts)" if args.unique else ""
        print(
            f"{requests:>9,} requests{label}: "
            f"wall median {statistics.median(r['wall_s'] for r in runs):.2f} s (runs {walls}), "
            f"peak RSS median {statistics.median(r['peak_rss_mb'] for r in runs):.0f} MB (runs {peaks}); "
            f"{first['shards']} shards, {first['bytes'] / 1e6:,.0f} MB, "
            f"{first['input_tokens'] / first['requests']:.0f} input tokens/request",
            flush=True,
        )


if __name__ == "__main__":
    main()
