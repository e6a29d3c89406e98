"""A small OpenAI client for tests that drive `batchgen serve` from a shell, one call per process.

    python tests/serve_client.py PORT FOLDER COMMAND [LINES]

Each command prints one JSON line: `{"status": 200, "body": ...}` for an answer, `{"status": <code>, "error":
<the error object>, "should_retry": <x-should-retry>}` for an error answer. The ids a command gets are kept in
FOLDER (outside the server's disk) for the commands after it:

    wait          until the server accepts connections (bounded)
    upload LINES  a batch input file of LINES chat requests; keeps its id as `file`
    files         the ids of the batch files stored
    create        a batch of the kept `file`; keeps its id as `batch`
    progress      the kept batch, asked again until it is answered with an error or has ended (bounded)
    output        how many times each custom_id is in the kept batch's output file
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

ENDED = ("failed", "completed", "expired", "cancelled")
DEADLINE = 60.0  # only ends a hang; every command returns long before it when the server works


def lines(count: int) -> bytes:
    """`count` chat requests, `req-0` to `req-<count - 1>`, as a batch input file."""
    return b"".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "gpt-4o-mini",
                                         "messages": [{"role": "user", "content": f"Say something about {i}."}]}
                                }).encode() + b"\n" for i in range(count))


def answer(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        body = call()
    except openai.APIStatusError as error:
        return {"status": error.status_code, "error": error.body,
                "should_retry": error.response.headers.get("x-should-retry")}
    return {"status": 200, "body": body}


def wait(port: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return {"status": 200, "body": "ready"}
        except OSError:
            time.sleep(0.05)
    return {"status": None, "body": "the server did not start"}


def progress(client: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        got = answer(lambda: client.batches.retrieve(batch_id).model_dump(mode="json"))
        if got["status"] != 200 or got["body"]["status"] in ENDED or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def output(client: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    def count() -> dict[str, int]:
        file_id = client.batches.retrieve(batch_id).output_file_id
        rows = client.files.content(file_id or "").text.splitlines()
        return dict(Counter(json.loads(row)["custom_id"] for row in rows))

    return answer(count)


def main(port: int, folder: Path, command: str, *args: str) -> dict[str, Any]:
    if command == "wait":
        return wait(port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=30)

    def kept(name: str) -> str:
        return (folder / name).read_text()

    if command == "upload":
        got = answer(lambda: client.files.create(file=("in.jsonl", lines(int(args[0]))), purpose="batch").id)
        if got["status"] == 200:
            (folder / "file").write_text(got["body"])
        return got
    if command == "files":
        return answer(lambda: [f.id for f in client.files.list(purpose="batch")])
    if command == "create":
        got = answer(lambda: client.batches.create(input_file_id=kept("file"), endpoint="/v1/chat/completions",
                                                   completion_window="24h").id)
        if got["status"] == 200:
            (folder / "batch").write_text(got["body"])
        return got
    if command == "progress":
        return progress(client, kept("batch"))
    if command == "output":
        return output(client, kept("batch"))
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])))
