"""Near-duplicate verdicts of a stage, settled from the ledger after each collection (see `dataset.near`).

The order is the canonical one exact dedupe and the export use: the seeds first, then the earlier stages' valid
examples, then the stage's own in variant, attempt and position order. Walking it once, an example is

  an unchanged evolution   if it nearly equals its own parent (an example of the stage it was evolved from);
  a near-duplicate         if it nearly repeats a seed or an example kept before it (the first such);
  kept                     otherwise, and later examples are compared with it.

The index is rebuilt from the ledger every time, from what the ledger holds and in that order, so the verdicts do
not depend on the order in which lines or batches arrive, and a restart (or a collection cut short by a crash,
which left no trace) gives the same ones. Only the verdicts that changed are written.

Most of the work on an example is a function of its text alone: its shingles, signature and band keys (`Signed`).
For a large batch, `NearPrefetch` has a worker process make them for the batch's valid examples while collect
still records the others (collect's own work is one process's; the machine's second CPU is mostly idle then), so
that only the walk is left once the ledger holds them all. What it made is what this process would have made, so
the verdicts are the same with or without it; if the worker fails, the examples are signed here.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from batchgen.dataset.lineage import example_texts
from batchgen.dataset.near import NearIndex, Shingled, Signed, bands_for, jaccard, rounded
from batchgen.dataset.reasons import NEAR_DUPLICATE, UNCHANGED_EVOLUTION
from batchgen.dataset.result_lines import PARALLEL_BYTES
from batchgen.ledger import Ledger
from batchgen.recipe.spec import EMBEDDINGS, JobSpec

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# The worker imports this very copy of batchgen (found through the package, not the path), then runs `_worker`.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import batchgen; sys.path.pop(0); "
              "from batchgen.run.near_dedupe import _worker; _worker()")


class NearPrefetch:
    """A worker process signing examples (`Signed`) as they are fed, for `settle_near_duplicates`.

    `feed` hands a chunk of examples to a thread that writes it to the worker (so a worker running behind never
    holds collect up); `result` waits for what the worker made of all of them."""

    def __init__(self, threshold: float, ngrams: int, fmt: str) -> None:
        self.keys: list[str] = []
        self._chunks: queue.Queue[list[str] | None] = queue.Queue()
        # What the worker writes to stderr is of no use here: if it fails, the examples are signed in this process.
        self._worker = subprocess.Popen([sys.executable, "-P", "-c", _BOOTSTRAP, str(_PACKAGE_ROOT)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._writer = threading.Thread(target=self._write, args=((threshold, ngrams, fmt),), daemon=True)
        self._writer.start()

    @classmethod
    def for_batch(cls, spec: JobSpec, paths: Sequence[Path]) -> NearPrefetch | None:
        """A prefetch for a batch whose result files are large enough to be judged in parallel (see
        `result_lines.judged_lines`), when the stage's examples are compared (None otherwise, or if no worker can
        be started)."""
        threshold = spec.validate_.near_threshold
        if threshold is None or spec.endpoint == EMBEDDINGS or (os.cpu_count() or 1) < 2 or not sys.executable:
            return None
        if sum(path.stat().st_size for path in paths) < PARALLEL_BYTES:
            return None
        try:
            return cls(threshold, spec.validate_.near_dedupe_ngrams, spec.dataset_format)
        except OSError:
            return None

    def feed(self, examples: Iterable[tuple[str, int, str]]) -> None:
        """Examples as (custom_id, position, content_json)."""
        contents = []
        for custom_id, position, content in examples:
            self.keys.append(f"{custom_id}#{position}")
            contents.append(content)
        if contents:
            self._chunks.put(contents)

    def result(self) -> tuple[dict[str, int], Signed] | None:
        """Where each fed example is (by key) in what the worker made, and that; None if the worker failed."""
        self._chunks.put(None)
        self._writer.join()
        assert self._worker.stdout is not None
        try:
            signed = pickle.load(self._worker.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            return None
        finally:
            self.close()
        if not isinstance(signed, Signed) or len(signed) != len(self.keys):
            return None
        return {key: i for i, key in enumerate(self.keys)}, signed

    def close(self) -> None:
        """End the worker (at once, if it is still at work: collect failed or was interrupted)."""
        self._chunks.put(None)  # the writer's last chunk, if `result` did not give it
        if self._worker.poll() is None:
            self._worker.kill()
        self._worker.wait()
        assert self._worker.stdout is not None
        self._worker.stdout.close()

    def _write(self, header: tuple[float, int, str]) -> None:
        stdin = self._worker.stdin
        assert stdin is not None
        try:
            pickle.dump(header, stdin, pickle.HIGHEST_PROTOCOL)
            while (chunk := self._chunks.get()) is not None:
                pickle.dump(chunk, stdin, pickle.HIGHEST_PROTOCOL)
            pickle.dump(None, stdin, pickle.HIGHEST_PROTOCOL)
        except (BrokenPipeError, OSError):
            pass  # the worker ended: `result` finds no answer
        finally:
            try:
                stdin.close()
            except OSError:
                pass


def _worker() -> None:
    """The worker's loop: sign each chunk of contents read from stdin; at the end, write them all to stdout."""
    source: IO[bytes] = sys.stdin.buffer
    threshold, ngrams, fmt = pickle.load(source)
    bands, rows = bands_for(threshold)
    parts = []
    while (chunk := pickle.load(source)) is not None:
        texts = (example_texts(orjson.loads(content), fmt) for content in chunk)
        parts.append(Signed.of(Shingled.of_texts(texts, ngrams), bands, rows))
    pickle.dump(Signed.joined(parts, bands), sys.stdout.buffer, pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


def _signed_rows(index: NearIndex, keys: Sequence[str], contents: Sequence[str], fmt: str,
                 prefetch: NearPrefetch | None) -> Signed:
    """The examples (by key and content_json), signed: taken from what the prefetch made where it has them (what
    it made is let go of here, once taken)."""
    def signed(chosen: Iterable[str]) -> Signed:
        return index.signed(Shingled.of_texts((example_texts(orjson.loads(c), fmt) for c in chosen), index.ngrams))

    prefetched = prefetch.result() if prefetch is not None else None
    if prefetched is None:
        return signed(contents)
    where, made = prefetched
    del prefetched
    at = np.fromiter((where.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
    missing = np.flatnonzero(at < 0)
    if len(missing):  # examples of earlier batches: signed here, after the prefetched ones
        made = Signed.joined([made, signed(contents[i] for i in missing.tolist())], index.bands)
        at[missing] = len(made) - len(missing) + np.arange(len(missing))
    return made.take(at)


def settle_near_duplicates(ledger: Ledger, spec: JobSpec, stage: str,
                           prefetch: NearPrefetch | None = None) -> int:
    """Settle the stage's near-duplicate verdicts (call inside the collect transaction); how many changed.
    `prefetch`: the worker signing the examples the collection brought, if there is one."""
    threshold = spec.validate_.near_threshold
    if threshold is None or spec.endpoint == EMBEDDINGS:
        return 0
    ngrams, fmt = spec.validate_.near_dedupe_ngrams, spec.dataset_format
    index = NearIndex(threshold, ngrams)

    def shingled(contents: Iterable[Any]) -> Shingled:
        return Shingled.of_texts((example_texts(content, fmt) for content in contents), ngrams)

    index.add_all([f"seed:{i}" for i in range(len(spec.seeds))], shingled(spec.seeds))
    names = [s.name for s in spec.resolved_stages()]
    source = spec.stage(stage).source
    parents: dict[str, int] = {}  # key of an example of the source stage -> its place in parent_sets
    parent_sets = Shingled.of_sets([])
    for earlier in names[:names.index(stage)]:
        kept = ledger.kept_examples(spec.name, earlier)
        found = shingled(orjson.loads(content) for _, content in kept)
        index.add_all([key for key, _ in kept], found)
        if earlier == source:
            parents, parent_sets = {key: i for i, (key, _) in enumerate(kept)}, found
    rows = ledger.near_dedupe_candidates(spec.name, stage)
    signed = _signed_rows(index, [row[1] for row in rows], [row[2] for row in rows], fmt, prefetch)
    verdicts: list[tuple[str, str, str] | None] = []
    for i, (_, _, _, parent, _, _) in enumerate(rows):
        similarity = (jaccard(signed.shingled.set(i), parent_sets.set(parents[parent]))
                      if parent is not None and parent in parents else 0.0)
        verdicts.append((UNCHANGED_EVOLUTION, f"Unchanged evolution: {parent} ({rounded(similarity)})", str(parent))
                        if similarity >= threshold else None)
    matches = index.admit_all([key for _, key, _, _, _, _ in rows], signed, skip=[v is not None for v in verdicts])
    changes = []
    for (row_id, _, _, _, valid, category), verdict, match in zip(rows, verdicts, matches, strict=True):
        if match is not None:
            verdict = (NEAR_DUPLICATE, f"Near duplicate: {match.key} ({rounded(match.similarity)})", match.key)
        now = (1, None, None, None) if verdict is None else (0, *verdict)
        if (valid, category) != now[:2] or (verdict is not None and category is None):
            changes.append((*now, row_id))
    ledger.set_near_verdicts(changes)
    return len(changes)
