"""Benchmark: near-duplicate detection (MinHash LSH with exact verification) over 100,000 examples.

The examples are Task API conversations made from templates with varied requests (operation, task, day, priority,
an opener and a closer), about 30 words each, and every tenth one a planted near-duplicate of an earlier one (case,
punctuation, two words swapped, or one word changed). Timed, in a fresh process: the shingles and signatures of all
the examples and the index lookup of each in order, as `batchgen.run.near_dedupe` walks a stage.

    python scripts/bench_dedup.py [--runs 3] [--examples 100000]

Prints the median wall time, the peak RSS (the process's VmHWM) and how many planted near-duplicates were found.
Target: <= 20 s and <= 400 MB at 100,000 examples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMED = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from batchgen.dataset.near import NearIndex, Shingled
    examples = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")]
    start = time.perf_counter()
    index = NearIndex()
    matches = index.admit_all([str(n) for n in range(len(examples))], Shingled.of_texts(t for t, _ in examples))
    found = {n: int(match.key) for n, match in enumerate(matches) if match is not None}
    seconds = time.perf_counter() - start
    planted = [n for n, (_, of) in enumerate(examples) if of is not None]
    hits = sum(1 for n in planted if n in found)
    peak = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
    print(seconds, peak / 1024, hits, len(planted), len(found))
""")

OPENERS = ["", "Hi! ", "Quick one: ", "Hey there, ", "Please ", "If you can, ", "When you have a minute, "]
CLOSERS = ["", " thanks", " please", " - it's for the team", ", cheers", " asap", " before the weekend"]
VERBS = ["review", "call", "book", "renew", "prepare", "water", "send", "clean", "update", "pick up", "schedule",
         "file", "draft", "order", "fix", "cancel", "email", "print", "sign", "pay", "plan", "test", "move", "sort"]
THINGS = ["budget", "plumber", "flights", "insurance", "demo", "plants", "invoice", "garage", "guide", "laundry",
          "dentist", "taxes", "contract", "slides", "report", "printer", "roadmap", "newsletter", "lease", "backup",
          "website", "offsite", "survey", "payroll", "inventory", "microscope", "greenhouse", "podcast", "kayak",
          "violin", "passport", "bicycle", "aquarium", "telescope", "quilt", "furnace", "gutter", "chimney"]
OWNERS = ["Acme", "Priya", "the design team", "grandma", "the landlord", "Marco", "the lab", "our client", "Yuki",
          "the school", "the board", "Dr. Okafor", "the neighbours", "the choir", "Sven", "the bakery"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "tomorrow", "next week",
        "March 3", "the 14th", "end of month", "noon", "tonight"]


def base(rng: random.Random, n: int) -> list[str]:
    task = f"{rng.choice(VERBS)} the {rng.choice(THINGS)} {rng.choice(['for', 'with', 'of'])} {rng.choice(OWNERS)}"
    day = rng.choice(DAYS)
    priority = rng.choice(["low", "medium", "high"])
    op = rng.randrange(3)
    if op == 0:
        human = f"{rng.choice(OPENERS)}create a {priority} priority task to {task} by {day}{rng.choice(CLOSERS)}"
        gpt = f"Created task: '{task.capitalize()}' | Priority: {priority} | Due: {day}"
    elif op == 1:
        human = f"{rng.choice(OPENERS)}move '{task}' to {day} and make it {priority}{rng.choice(CLOSERS)}"
        gpt = f"Updated task: '{task.capitalize()}' | Due: changed to {day} | Priority: changed to {priority}"
    else:
        human = f"{rng.choice(OPENERS)}I finished {task}, mark it as done{rng.choice(CLOSERS)}"
        gpt = f"Completed task: '{task.capitalize()}'"
    return [human, gpt]


def plant(rng: random.Random, texts: list[str]) -> list[str]:
    human, gpt = texts
    kind = rng.randrange(4)
    if kind == 0:
        return [human.upper(), gpt.lower()]
    if kind == 1:
        return [human.replace(",", "").replace("'", "") + "!", gpt.replace("|", ";")]
    words = human.split()
    i = rng.randrange(len(words) - 1)
    if kind == 2:
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        words[i] = rng.choice(["kindly", "really", "soon", "maybe"])
    return [" ".join(words), gpt]


def write_examples(path: Path, count: int) -> None:
    rng = random.Random(5)
    made: list[list[str]] = []
    with open(path, "w", encoding="utf-8") as out:
        for n in range(count):
            if n % 10 == 9 and made:
                of = rng.randrange(len(made))
                texts, planted = plant(rng, made[of]), of
            else:
                texts, planted = base(rng, n), None
            made.append(texts)
            out.write(json.dumps([texts, planted]) + "\n")


def run_once(path: Path) -> tuple[float, float, int, int, int]:
    done = subprocess.run([sys.executable, "-c", TIMED, str(ROOT), str(path)], capture_output=True, text=True,
                          check=True)
    seconds, peak, hits, planted, found = done.stdout.split()
    return float(seconds), float(peak), int(hits), int(planted), int(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=100_000)
    args = parser.parse_args()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_dedup_{os.getpid()}.jsonl"
    try:
        write_examples(path, args.examples)
        results = [run_once(path) for _ in range(args.runs)]
    finally:
        path.unlink(missing_ok=True)
    wall = statistics.median(r[0] for r in results)
    _, peak, hits, planted, found = results[0]
    print(f"near-dedupe {args.examples} examples: median {wall:.2f} s over {args.runs} runs "
          f"(each: {', '.join(f'{r[0]:.2f}' for r in results)}), peak RSS {max(r[1] for r in results):.0f} MB; "
          f"planted near-duplicates found {hits}/{planted}, examples rejected {found} "
          f"(machine: {os.cpu_count()} cores, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
