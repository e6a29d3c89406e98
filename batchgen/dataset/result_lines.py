"""Judge the lines of downloaded output and error files: parse each, and validate what a success generated.

`judge_line` is pure (bytes in, a plain tuple out) and knows nothing of the ledger. A large file is judged in one
worker process while the caller records what it has judged so far (see `judged_lines`). `judge_answer` judges one
answer that came another way (a synchronous preview) as a line of the output file is judged.

A judged line is one of:
  ("ok", custom_id, status_code, request_id, finish_reason, prompt, cached, completion, reasoning,
         response_reason | None, [example, ...])        example = (raw_json | None, hash | None, valid, category,
                                                                   reason | None)
         (response_reason comes with examples when it only notes something of them: an answer cut at max_tokens
         keeps its complete examples, and one of another shape keeps what it held; an embeddings answer, judged
         by `EmbeddingRules`, has no finish_reason and at most one example; a judge
         stage's answer, read by `JudgeRules`, holds judgments (index, score, reason) in place of examples)
  ("error", custom_id, status_code | None, code, message, request_id | None)
  ("corrupt", line_number, message)
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from batchgen.cpus import usable_cpus
from batchgen.dataset.embeddings import EmbeddingRules, judge_embedding
from batchgen.dataset.judge import JudgeRules, parse_judgments
from batchgen.dataset.validate import Rules, example_key, judge_examples, parse_response
from batchgen.errors import BatchgenError

# A result file at least this big is judged in a worker process: about 8,000 lines of a typical output file, where
# the worker's start (about 0.2 s) is already small next to the judging it takes off the caller.
PARALLEL_BYTES = 16 << 20
CHUNK_LINES = 1000  # judged lines per message from the worker (about 1.7 MB for 6 examples a line)
QUEUE_CHUNKS = 8  # messages the worker may run ahead of the caller
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# The worker imports this very copy of batchgen (found through the package, not the path), then runs `_worker`.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import batchgen; sys.path.pop(0); "
              "from batchgen.dataset.result_lines import _worker; _worker()")

Judged = tuple[Any, ...]
AnyRules = Rules | EmbeddingRules | JudgeRules


def judge_line(line: bytes, number: int, fmt: str, rules: AnyRules) -> Judged:
    """One line of a result file, judged by chat `Rules` (examples of format `fmt`) or `EmbeddingRules`."""
    return _judge(line, number, fmt, rules)[0]


def _judge(line: bytes, number: int, fmt: str, rules: AnyRules) -> tuple[Judged, list[Any]]:
    """`judge_line`, and the examples of a chat answer as parsed (one for each example of the judged line)."""
    try:
        row = _load_row(line)
    except json.JSONDecodeError as error:
        return ("corrupt", number, str(error)), []
    if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
        return ("corrupt", number, "not a batch result line"), []
    custom_id, response = row["custom_id"], row.get("response")
    if isinstance(response, dict) and 200 <= int(response.get("status_code") or 0) < 300:
        return _success(custom_id, response, fmt, rules)
    if isinstance(response, dict):
        inner = (response.get("body") or {}).get("error") or {}
        return ("error", custom_id, response.get("status_code"), inner.get("code") or inner.get("type"),
                inner.get("message"), response.get("request_id")), []
    failure = row.get("error") or {}
    return ("error", custom_id, None, failure.get("code"), failure.get("message"), None), []


def judge_answer(custom_id: str, response: dict[str, Any], fmt: str, rules: AnyRules) -> Judged:
    """One successful answer, judged exactly as a 2xx line of an output file is: `response` is the line's
    `response` object (status_code, request_id, body). `batchgen preview` judges its synchronous answers here, so a
    check that collect makes of an answer (the rules, and what is added to them) a preview makes too."""
    return _success(custom_id, response, fmt, rules)[0]


def _load_row(line: bytes) -> Any:
    """A line as JSON. NaN and Infinity, which some servers write for a number that is not finite, are read too,
    so that the value they stand in is judged rather than the whole file taken for corrupt."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        if b"NaN" not in line and b"Infinity" not in line:
            raise
        strict = error
    try:
        return json.loads(line)
    except ValueError:
        raise strict from None


def _success(custom_id: str, response: dict[str, Any], fmt: str, rules: AnyRules) -> tuple[Judged, list[Any]]:
    body = response.get("body") or {}
    usage = body.get("usage") or {}
    if isinstance(rules, EmbeddingRules):
        return _embedding_success(custom_id, response, body, usage, rules), []
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    examples: list[Any]
    raws: list[Any] = []
    if isinstance(rules, JudgeRules):
        problem, examples = parse_judgments(message.get("content"), finish, message.get("refusal"))
    else:
        parsed = parse_response(message.get("content"), finish, fmt, refusal=message.get("refusal"),
                                keys=rules.examples_keys)
        raws = parsed.examples
        problem, examples = parsed.reason, judge_examples(raws, fmt, rules, custom_id)
    reason = (problem.category, str(problem)) if problem is not None else None
    return ("ok", custom_id, response.get("status_code"), response.get("request_id"), finish,
            int(usage.get("prompt_tokens") or 0),
            int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0), reason,
            examples), raws


def _embedding_success(custom_id: str, response: dict[str, Any], body: Any, usage: dict[str, Any],
                       rules: EmbeddingRules) -> Judged:
    """An embeddings answer: input tokens only, and its one vector judged against the text its request sent."""
    reason, examples = judge_embedding(body, rules.inputs.get(custom_id, ""), rules)
    return ("ok", custom_id, response.get("status_code"), response.get("request_id"), None,
            int(usage.get("prompt_tokens") or 0), 0, 0, 0,
            (reason.category, str(reason)) if reason is not None else None, examples)


def judged_lines(path: Path, fmt: str, rules: AnyRules, *, parallel: bool | None = None,
                 near: tuple[float, int] | None = None) -> Iterator[Judged]:
    """Every non-empty line of a result file, judged, in file order (streamed: one chunk in memory at a time).

    With `parallel` (by default: a file of PARALLEL_BYTES or more on a machine with more than one CPU) a worker
    process parses and validates the lines while the caller records the ones it already has; the lines and their
    verdicts are the same either way.

    `near` (a near-dedupe threshold and its ngrams) asks the worker to sign, as well, the valid examples of each
    chunk for the near-dedupe walk (`dataset.near.sign_texts`), so that the caller need not parse and hash them
    again once they are recorded; they come as ("signed", keys, Signed) after the chunk's lines, for the first
    line of each custom_id. Judged here, nothing is signed.
    """
    if parallel is None:
        parallel = usable_cpus() > 1 and bool(sys.executable) and path.stat().st_size >= PARALLEL_BYTES
    if parallel:
        yield from _judged_by_worker(path, fmt, rules, near)
        return
    for judged, _ in _judged_with_examples(path, fmt, rules):
        yield judged


def _judged_with_examples(path: Path, fmt: str, rules: AnyRules) -> Iterator[tuple[Judged, list[Any]]]:
    """Every non-empty line of a result file judged here, in file order, with the examples it held as parsed
    (see `_judge`)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield _judge(line, number, fmt, rules)


def _judged_by_worker(path: Path, fmt: str, rules: AnyRules, near: tuple[float, int] | None) -> Iterator[Judged]:
    # A fresh interpreter, not multiprocessing: it inherits neither the caller's workspace lock nor the emulator's
    # threads, and it does not re-import the caller's __main__ (a script calling collect needs no main guard).
    # -P keeps the current directory off its import path; the messages come over a pipe of their own, so nothing
    # the interpreter prints can be taken for one.
    read_end, write_end = os.pipe()
    stderr = tempfile.TemporaryFile()  # a file, not a pipe: what the worker writes there can never block it
    try:
        worker = subprocess.Popen([sys.executable, "-P", "-c", _BOOTSTRAP, str(_PACKAGE_ROOT), str(write_end)],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                  pass_fds=(write_end,))
    except OSError:  # no interpreter to start: judge here
        os.close(read_end)
        stderr.close()
        yield from judged_lines(path, fmt, rules, parallel=False)
        return
    finally:
        os.close(write_end)  # the worker has its copy; the reader sees the end when the worker's closes
    assert worker.stdin is not None
    stream = os.fdopen(read_end, "rb")
    # A thread reads the worker's messages into a short queue, so that the worker runs ahead while the caller
    # records; it holds the GIL only to hand over each message.
    messages: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
    reader = threading.Thread(target=_read_messages, args=(stream, messages), daemon=True)
    finished = False
    try:
        try:
            worker.stdin.write(pickle.dumps((str(path), fmt, rules, near), pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:
            pass  # it ended at once; the missing messages below say so
        finally:
            _close_quietly(worker.stdin)
        reader.start()
        while True:
            message = messages.get()
            if message is None:
                try:
                    worker.wait(5)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                stderr.seek(0)
                why = stderr.read().decode(errors="replace").strip().splitlines()
                raise BatchgenError(f"Judging {path} failed: its worker process ended early (exit code "
                                    f"{worker.returncode}{': ' + why[-1] if why else ''})")
            for judged in pickle.loads(message):
                if judged[0] == "end":
                    finished = True
                    return
                if judged[0] == "failed":
                    raise BatchgenError(f"Judging {path} failed: {judged[1]}")
                yield judged
    finally:
        if not finished and worker.poll() is None:
            worker.kill()  # the caller stopped early (an error, a corrupt line, Ctrl-C): the rest is not needed
        while reader.is_alive():  # let the reader see the end of the pipe
            try:
                messages.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.wait()
        stream.close()
        stderr.close()


def _close_quietly(stream: IO[bytes]) -> None:
    try:
        stream.close()
    except OSError:
        pass


_MAGIC = b"BGJ1"
_MAX_MESSAGE = 1 << 30


def _read_messages(stream: IO[bytes], messages: queue.Queue[bytes | None]) -> None:
    """Each whole message of the worker, then None: at the end of its output, or at anything that is not a whole
    message (a worker killed while writing one)."""
    try:
        while True:
            header = stream.read(12)
            if len(header) < 12 or header[:4] != _MAGIC:
                return
            length = int.from_bytes(header[4:], "big")
            body = stream.read(length) if length <= _MAX_MESSAGE else b""
            if len(body) != length or not body:
                return
            messages.put(body)
    finally:
        messages.put(None)


class _Signer:
    """Adds to a chunk of judged lines the signed valid examples of each custom_id's first line (see `judged_lines`),
    from the examples as the line's answer held them (what the ledger stores is their compact JSON: the same texts)."""

    def __init__(self, fmt: str, threshold: float, ngrams: int) -> None:
        self.fmt, self.threshold, self.ngrams = fmt, threshold, ngrams
        self.seen: set[str] = set()

    def __call__(self, chunk: list[Judged], raws: list[list[Any]]) -> list[Judged]:
        from batchgen.dataset.lineage import example_texts
        from batchgen.dataset.near import sign_texts

        keys, texts = [], []
        for judged, examples in zip(chunk, raws, strict=True):
            if judged[0] not in ("ok", "error") or judged[1] in self.seen:
                continue
            self.seen.add(judged[1])
            if judged[0] == "error" or len(examples) != len(judged[10]):
                continue  # an error, or verdicts not of parsed examples (an embedding's, a judge stage's)
            for position, ((content, _, valid, _, _), raw) in enumerate(zip(judged[10], examples, strict=True)):
                if valid and content is not None:
                    keys.append(example_key(judged[1], position))
                    texts.append(example_texts(raw, self.fmt))
        if not keys:
            return chunk
        return [*chunk, ("signed", keys, sign_texts(texts, self.threshold, self.ngrams))]


def _worker() -> None:
    """Judge the file named on stdin in chunks of CHUNK_LINES lines, each sent on the message pipe (fd in argv[2])
    as a magic, an 8-byte length and a pickle, then ("end",); an unexpected error is sent as ("failed", text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; a closed pipe stops us
    # The parsed lines hold no cycles and reference counting frees them; the cyclic collector's passes over the
    # chunk in hand were a fifth of the worker's time. It judges one file, then ends.
    gc.disable()
    out = os.fdopen(int(sys.argv[2]), "wb")

    def send(chunk: list[Judged]) -> None:
        data = pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL)
        out.write(_MAGIC + len(data).to_bytes(8, "big"))
        out.write(data)
        out.flush()

    try:
        path, fmt, rules, near = pickle.loads(sys.stdin.buffer.read())
        sign = _Signer(fmt, *near) if near is not None else None
        chunk: list[Judged] = []
        raws: list[list[Any]] = []  # the examples of each line of the chunk as parsed, for the signer
        for judged, examples in _judged_with_examples(Path(path), fmt, rules):
            chunk.append(judged)
            raws.append(examples)
            if len(chunk) >= CHUNK_LINES:
                send(chunk if sign is None else sign(chunk, raws))
                chunk, raws = [], []
        send((chunk if sign is None else sign(chunk, raws)) + [("end",)])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the caller stopped reading (an error, a corrupt line, Ctrl-C)
    except Exception as error:  # noqa: BLE001 - reported to the caller, which raises it as one line
        try:
            send([("failed", f"{type(error).__name__}: {error}")])
        except OSError:
            pass
    finally:
        _close_quietly(out)
