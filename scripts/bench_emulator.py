#!/usr/bin/env python
"""Benchmark: a 50,000-line chat batch (about 100 MB) through `batchgen serve` on the simulate executor.

    python scripts/bench_emulator.py                       # 50,000 lines, 3 runs
    python scripts/bench_emulator.py --runs 5 --examples 10

Each line is a Task API generation request: the job's system prompt, seed examples rotated through
jobs/task_api/seeds.jsonl, an axis cell (operation x style x errors), "Generate N NEW examples" (5 by default) and
the ShareGPT json_schema response_format. `--prompt compact` (default; about 2 KB a line, so 50,000 lines make the
issue's ~100 MB) puts 4 seeds in a short instruction; `--prompt job` renders the job's own template
(jobs/task_api/prompt.j2, 3 seeds; about 3.3 KB a line, 163 MB). The simulate executor answers each line with N
schema-valid examples, token-counted exactly.

Every run starts a fresh `batchgen serve` subprocess on a fresh state directory (latencies zero, so only the work
is measured) and times, through the openai SDK over loopback HTTP: upload (streamed from disk) -> create ->
poll until completed -> download the output file (streamed to disk). Peak RSS: the server's VmHWM from
/proc/<pid>/status, and this client's ru_maxrss. Prints each run and the median.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import openai

from batchgen.recipe.formats import response_format

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "task_api"


COMPACT = ("You are generating training examples for a Task API assistant. Examples:\n{seeds}\n"
           "Generate {count} NEW examples like these: operation {operation}, {style} phrasing, "
           "{errors}. Return {{\"examples\": [...]}}.")


def render(template: jinja2.Template | None, seeds: list, count: int, operation: str, style: str,
           errors: bool) -> str:
    if template is None:
        return COMPACT.format(seeds="\n".join(json.dumps(s) for s in seeds), count=count, operation=operation,
                              style=style, errors="some error cases" if errors else "no error cases")
    return template.render(seed_examples=json.dumps(seeds, indent=2), count=count, operation=operation,
                           style=style, include_errors=errors)


def write_input(path: Path, lines: int, examples: int, prompt: str) -> int:
    """The benchmark's input file; returns its size in bytes."""
    seeds_per_request = 4 if prompt == "compact" else 3
    seeds = [json.loads(line) for line in (JOB / "seeds.jsonl").read_text().splitlines() if line.strip()]
    template = jinja2.Template((JOB / "prompt.j2").read_text()) if prompt == "job" else None
    cells = list(itertools.product(["create", "update", "complete", "delete", "list"],
                                   ["formal", "casual", "imperative", "question"], [False, True]))
    rf = response_format("sharegpt")
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            start = (i * seeds_per_request) % len(seeds)
            chosen = [seeds[(start + k) % len(seeds)] for k in range(seeds_per_request)]
            operation, style, errors = cells[i % len(cells)]
            text = render(template, chosen, examples, operation, style, errors)
            body = {"model": "gpt-4o-mini", "temperature": (0.7, 0.9, 1.0)[i % 3], "max_tokens": 4000,
                    "response_format": rf,
                    "messages": [{"role": "system", "content": "You generate training data in JSON format."},
                                 {"role": "user", "content": text}]}
            out.write(json.dumps({"custom_id": f"bench-{i:06d}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": body}) + "\n")
    return path.stat().st_size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(state: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "batchgen", "serve", "--port", str(port), "--state", str(state),
               "--validation-seconds", "0", "--line-seconds", "0", "--finalizing-seconds", "0",
               "--log-level", "warning"]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("batchgen serve did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(input_path: Path, lines: int, work: Path, caching: bool) -> dict[str, float]:
    port = free_port()
    (work / "state").mkdir()
    (work / "state" / "config.json").write_text(json.dumps({"prompt_caching": caching}), encoding="utf-8")
    server = start_server(work / "state", port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600, max_retries=0)
    try:
        began = time.monotonic()
        with open(input_path, "rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        uploaded_at = time.monotonic()
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            batch = client.batches.retrieve(batch.id)
        finished_at = time.monotonic()
        if batch.status != "completed" or batch.request_counts.completed != lines:
            raise SystemExit(f"batch ended {batch.status}: {batch.request_counts} {batch.errors}")
        output = work / "output.jsonl"
        with client.files.with_streaming_response.content(batch.output_file_id) as response, \
                open(output, "wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
        ended = time.monotonic()
        with open(output, "rb") as handle:
            rows = sum(1 for _ in handle)
        if rows != lines:
            raise SystemExit(f"output has {rows} rows, expected {lines}")
        return {"wall": ended - began, "upload": uploaded_at - began, "run": finished_at - uploaded_at,
                "download": ended - finished_at, "output_mb": output.stat().st_size / 1e6,
                "server_rss_mb": peak_rss_mb(server.pid)}
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=5, help="examples each request asks for")
    parser.add_argument("--prompt", choices=["compact", "job"], default="compact", help="request shape (above)")
    parser.add_argument("--no-prompt-caching", action="store_true",
                        help="serve with prompt_caching = false (to see what the cache simulation costs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        input_path = Path(tmp) / "input.jsonl"
        size = write_input(input_path, args.lines, args.examples, args.prompt)
        print(f"machine: {machine()}")
        print(f"input: {args.lines} lines, {size / 1e6:.1f} MB ({args.prompt} prompt), {args.examples} examples "
              f"asked per line; prompt caching {'off' if args.no_prompt_caching else 'on'}")
        results = []
        for run in range(args.runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            result = one_run(input_path, args.lines, work, not args.no_prompt_caching)
            results.append(result)
            print(f"run {run + 1}: wall {result['wall']:.2f} s (upload {result['upload']:.2f}, validate+execute "
                  f"{result['run']:.2f}, download {result['download']:.2f}); output {result['output_mb']:.1f} MB; "
                  f"server peak RSS {result['server_rss_mb']:.0f} MB", flush=True)
        client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"median wall {statistics.median(r['wall'] for r in results):.2f} s; max server peak RSS "
              f"{max(r['server_rss_mb'] for r in results):.0f} MB; client peak RSS {client_rss:.0f} MB")


if __name__ == "__main__":
    main()
