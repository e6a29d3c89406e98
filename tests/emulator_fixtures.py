"""Helpers for the emulator tests: an embedded emulator with an SDK client, request lines, schema checks."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import openai
import yaml

from batchgen.emulator import EmbeddedEmulator, EmulatorControl, start_embedded

SPEC = Path(__file__).resolve().parent / "fixtures" / "spec" / "openai-batch-openapi.yaml"  # official extract
FAST = {"validation_seconds": 0, "line_seconds": 0, "finalizing_seconds": 0, "cancelling_seconds": 0}
TERMINAL = ("failed", "completed", "expired", "cancelled")


@dataclass
class Emu:
    handle: EmbeddedEmulator
    client: openai.OpenAI
    control: EmulatorControl

    @property
    def base_url(self) -> str:
        return self.handle.base_url


@contextlib.contextmanager
def running(state_dir: Path, *, token: str | None = None, api_key: str = "test-key", max_retries: int = 0,
            **config: Any) -> Iterator[Emu]:
    """An embedded emulator (fast timings unless overridden) and an SDK client on it; both closed after."""
    handle = start_embedded(state_dir, {**FAST, **config}, token=token)
    client = openai.OpenAI(base_url=handle.base_url, api_key=api_key, max_retries=max_retries, timeout=30)
    try:
        yield Emu(handle, client, EmulatorControl(handle.base_url, token))
    finally:
        client.close()
        handle.stop()


def chat_line(i: int, *, model: str = "gpt-4o-mini", content: str | None = None, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content or f"Say something about number {i}."}]
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages, **body}}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def upload(client: openai.OpenAI, lines: list[Any], name: str = "input.jsonl") -> Any:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch")


def create(client: openai.OpenAI, file_id: str, endpoint: str = "/v1/chat/completions", **kwargs: Any) -> Any:
    return client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h", **kwargs)


def wait(emu: Emu, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 20.0) -> Any:
    emu.control.wait_for(batch_id, statuses, timeout)
    return emu.client.batches.retrieve(batch_id)


def run_lines(emu: Emu, lines: list[Any], endpoint: str = "/v1/chat/completions") -> Any:
    """Upload, create and wait for a terminal status."""
    batch = create(emu.client, upload(emu.client, lines).id, endpoint)
    return wait(emu, batch.id)


def rows(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))


NULLABLE_OPTIONALS = ("Batch", "OpenAIFile", "BatchError")


@lru_cache(maxsize=1)
def _loose() -> dict[str, Any]:
    """The spec with the optional properties of the objects above allowed to be null, as the real API returns
    them (spec §2.1: present with null until set)."""
    doc = copy.deepcopy(_spec())
    for name in NULLABLE_OPTIONALS:
        schema = doc["components"]["schemas"][name]
        required = set(schema.get("required", []))
        for key, prop in schema.get("properties", {}).items():
            if key not in required:
                schema["properties"][key] = {"anyOf": [prop, {"type": "null"}]}
    return doc


def validate(name: str, instance: Any) -> None:
    """Validate against components.schemas[name] of the OpenAPI extract (optional fields may be null)."""
    doc = _loose()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)
