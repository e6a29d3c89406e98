"""Benchmark: collect, validate and record a 50,000-line output file (about 100 MB).

Setup (not timed): a job of 50,000 requests is compiled and recorded in a fresh ledger as one submitted batch, and
an output file is written the way the Batch API writes one (rows shuffled, each a chat.completion holding six
ShareGPT examples, which makes the file about 100 MB). Timed, in a fresh process: `collect_batch` streams the
file, joins every row by custom_id, prices it, validates and deduplicates its examples, and records results and
examples in the ledger.

    python scripts/bench_collect.py [--runs 3] [--lines 50000] [--near-dedupe off]

Prints the median wall time and the peak RSS of the timed process plus that of its judging worker (the two run at
the same time, so their sum bounds what collect needs). Target: <= 5 s and <= 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

JOB_TOML = """
name = "bench_collect"
model = "gpt-4o-mini"
format = "sharegpt"
target = {target}
examples_per_request = 10
overgeneration = 1
[prompt]
template = "prompt.j2"
seeds = "seeds.jsonl"
seeds_per_request = 2
max_tokens = 4000
[axes.values]
operation = ["create", "update", "complete", "delete", "list"]
[validate]
response_patterns = ["Created task:", "Updated task:", "Completed task:", "Deleted task:", "Error:", "tasks found"]
near_dedupe = {near}
"""

SETUP = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from batchgen.ledger import Ledger
    from batchgen.run.session import Session
    from batchgen.run.tick import register_job, ensure_compiled
    from batchgen.ledger.workspace import Workspace
    job_dir, ws = Path(sys.argv[1]), Workspace(Path(sys.argv[2])).ensure()
    ledger = Ledger.open(ws.ledger_path)
    session = Session(ledger, ws)
    spec = register_job(session, job_dir)
    ensure_compiled(session, spec, spec.stage())
    shard = ledger.pending_shards(spec.name)[0]
    batch = {"id": "batch_bench", "status": "completed", "input_file_id": "file-in", "created_at": 0}
    with ledger.transaction():
        ledger.record_batch(spec.name, shard, batch, backend="embedded", next_poll=0.0)
        ledger.record_poll(spec.name, {**batch, "output_file_id": "file-out"}, polls=1, next_poll=0.0)
    print(json.dumps([r["custom_id"] for r in ledger.rows("SELECT custom_id FROM requests")]))
""")

TIMED = textwrap.dedent("""
    import os, resource, sys, threading, time
    from pathlib import Path

    # The judging worker's own peak: VmHWM of the child once it runs batchgen.dataset.result_lines, read from /proc while it runs
    # (ru_maxrss of a child, and VmHWM before its exec, count the parent's pages it shares between fork and exec).
    child_peak_kb = 0
    def watch():
        global child_peak_kb
        while True:
            for task in os.listdir("/proc/self/task"):
                try:
                    pids = open(f"/proc/self/task/{task}/children").read().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        if b"batchgen.dataset.result_lines" not in open(f"/proc/{pid}/cmdline", "rb").read():
                            continue  # not exec'ed yet: still the parent's pages
                        for line in open(f"/proc/{pid}/status"):
                            if line.startswith("VmHWM:"):
                                child_peak_kb = max(child_peak_kb, int(line.split()[1]))
                    except OSError:
                        pass
            time.sleep(0.02)
    if os.path.exists("/proc/self/task"):
        threading.Thread(target=watch, daemon=True).start()

    from batchgen.run.collect import collect_batch
    from batchgen.ledger import Ledger
    from batchgen.run.session import Session
    from batchgen.run.tick import job_spec
    from batchgen.ledger.workspace import Workspace
    ws = Workspace(Path(sys.argv[1]))
    start = time.perf_counter()
    ledger = Ledger.open(ws.ledger_path)
    session = Session(ledger, ws)
    spec = job_spec(session, "bench_collect")
    batch = ledger.batch("batch_bench")
    report = collect_batch(ledger, None, ws, spec, batch)
    print(time.perf_counter() - start, report.examples_valid, sum(report.outcomes.values()),
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, child_peak_kb)
""")

VERBS = ["Add", "Create", "Schedule", "Set up", "Put in", "Make", "Log", "Register"]
THINGS = ["budget review", "team sync", "dentist visit", "invoice run", "code review", "release notes",
          "quarterly plan", "vendor call", "travel booking", "design critique", "backup check", "lab report"]


def example(rng: random.Random, n: int) -> dict:
    thing = f"{rng.choice(THINGS)} {n}"
    return {"conversations": [
        {"from": "human", "value": f"{rng.choice(VERBS)} a task for the {thing} on day {rng.randint(1, 28)} "
                                   f"with {rng.choice(['low', 'medium', 'high'])} priority, please"},
        {"from": "gpt", "value": f"Created task: '{thing.title()}' | Priority: medium | Due: 2025-02-"
                                 f"{rng.randint(10, 28)}"}]}


def write_output(path: Path, custom_ids: list[str], per_line: int) -> None:
    rng = random.Random(7)
    order = custom_ids[:]
    rng.shuffle(order)
    with open(path, "w", encoding="utf-8") as out:
        for i, cid in enumerate(order):
            content = json.dumps({"examples": [example(rng, i * per_line + k) for k in range(per_line)]})
            body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 900 + i % 50, "completion_tokens": 600 + i % 70, "total_tokens": 0,
                              "prompt_tokens_details": {"cached_tokens": 0},
                              "completion_tokens_details": {"reasoning_tokens": 0}}}
            row = {"id": f"batch_req_{i}", "custom_id": cid,
                   "response": {"status_code": 200, "request_id": f"req_{i}", "body": body}, "error": None}
            out.write(json.dumps(row) + "\n")


def run_once(lines: int, per_line: int, near: str = "0.8") -> tuple[float, float, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job"
        job.mkdir()
        (job / "job.toml").write_text(JOB_TOML.format(target=lines * 10, near=near), encoding="utf-8")
        (job / "prompt.j2").write_text("Operation: {{ operation }}\n{{ seed_examples }}\nGenerate {{ count }}.",
                                       encoding="utf-8")
        rng = random.Random(1)
        (job / "seeds.jsonl").write_text("".join(json.dumps(example(rng, -i)) + "\n" for i in range(1, 6)),
                                         encoding="utf-8")
        ws = Path(tmp) / "ws"
        setup = subprocess.run([sys.executable, "-c", SETUP, str(job), str(ws)], capture_output=True, text=True,
                               check=True)
        ids = json.loads(setup.stdout)
        target = ws / "results" / "bench_collect" / "batch_bench.output.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_output(target, ids, per_line)
        size = target.stat().st_size
        timed = subprocess.run([sys.executable, "-c", TIMED, str(ws)], capture_output=True, text=True, check=True)
        seconds, valid, rows, peak_kb, worker_kb = timed.stdout.split()
        assert int(rows) == lines, timed.stdout
        return float(seconds), int(peak_kb) / 1024, size, int(worker_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--examples-per-line", type=int, default=6)
    parser.add_argument("--near-dedupe", choices=["on", "off"], default="on",
                        help="near-duplicate detection at its default threshold (on) or turned off")
    args = parser.parse_args()
    near = "0.8" if args.near_dedupe == "on" else "false"
    results = [run_once(args.lines, args.examples_per_line, near) for _ in range(args.runs)]
    wall = statistics.median(r[0] for r in results)
    rss, worker = max(r[1] for r in results), max(r[3] for r in results)
    print(f"collect {args.lines} lines, {args.examples_per_line} examples each, near-dedupe {args.near_dedupe} ({results[0][2] / 1e6:.0f} MB): "
          f"median {wall:.2f} s over {args.runs} runs (each: {', '.join(f'{r[0]:.2f}' for r in results)}), "
          f"peak RSS {rss + worker:.0f} MB = {rss:.0f} MB collecting + {worker:.0f} MB judging worker "
          f"(machine: {os.cpu_count()} cores, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
