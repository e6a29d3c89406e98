"""Prompt caching as OpenAI does it, for the `simulate` executor: `usage.prompt_tokens_details.cached_tokens`.

A chat prompt of 1,024 tokens or more has its prefix cached in steps of 128 tokens (1,024, 1,152, ...); a later
prompt on the same model whose first N tokens equal a prefix seen within the TTL (`prompt_cache_ttl_seconds`,
emulated, 300 by default: OpenAI keeps a prefix 5 to 10 minutes after its last use, up to an hour off-peak; the low
end keeps estimates honest) gets the largest such N as cached tokens. A hit refreshes the prefix.

The prompt is the token sequence `count_messages` counts: for each message its framing (3 tokens), role and content
(and name), then the reply priming; a `json_schema` response format's tokens come first, keyed by the schema. Token
ids come from the model's encoding, the framing are ids no encoding has, so the total is exactly `prompt_tokens`.
Only a 128-bit hash per step boundary is kept (blake2b over the ids, updated per 128-token block), per model, with
the emulated time it was last seen.

Deterministic: the lines of a batch are decided in the order of its input file even though they run shuffled (the
runner `prepare`s each block's lines before any of them runs, so a line hits what an earlier line of the file
shares with it, within the batch regardless of the TTL); against other batches and synchronous calls, by emulated
time. A batch's own lines never count as "another" for one another, so the shuffled order changes nothing.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchgen.emulator.tokencount import _CHUNK_AT, _CHUNK_MIN, TokenCounter, _content_text, _key
from batchgen.recipe.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    get_encoding,
    response_format_tokens,
)

CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
_FRAME, _NAME, _PRIMING, _FORMAT = 0xFFFFFF01, 0xFFFFFF02, 0xFFFFFF03, 0xFFFFFF04  # ids no encoding has
_IDS_KEPT = 4096  # token ids of this many chunks of long texts (system prompts, seed blocks) are kept
_PRUNE_AT = 500_000  # hashes per model before the expired ones are dropped
_NEVER = float("inf")


@dataclass
class _Seen:
    """When a prefix was last seen and by whom; and the last time by another source than that one, so a batch's
    lines look only at what other batches and calls left."""

    when: float
    source: str | None
    before: float | None = None
    before_source: str | None = None

    def touch(self, when: float, source: str | None) -> None:
        if source is not None and source == self.source:
            self.when = max(self.when, when)
            return
        self.before, self.before_source = self.when, self.source
        self.when, self.source = when, source

    def other_than(self, source: str | None) -> float | None:
        if source is None or self.source != source:
            return self.when
        return self.before


@dataclass
class _BatchPrefixes:
    """The first input line of a batch that has each prefix hash; lines are added in input order."""

    next_index: int = 0
    first: dict[bytes, int] = field(default_factory=dict)


class PromptCache:
    """The prefixes seen per model, and those of the batches that are running."""

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._lock = threading.Lock()
        self._seen: dict[str, dict[bytes, _Seen]] = {}
        self._batches: dict[str, _BatchPrefixes] = {}
        self._ids: OrderedDict[tuple[str, str | bytes], array[int]] = OrderedDict()

    # -- the prompt as hashes ---------------------------------------------------------------------------------
    def hashes(self, messages: Sequence[Mapping[str, Any]], model: str, response_format: Any) -> list[bytes]:
        """The hash of the prompt's prefix at 1,024 tokens and every 128 after, as far as the prompt goes."""
        name = self._counter.encoding_name(model)
        ids = array("I")
        head = response_format_tokens(response_format, model)
        ids.extend([_FORMAT] * head)
        for message in messages:
            ids.extend([_FRAME] * TOKENS_PER_MESSAGE)
            ids.extend(self._text_ids(name, str(message.get("role", ""))))
            ids.extend(self._text_ids(name, _content_text(message.get("content"))))
            if message.get("name"):
                ids.extend([_NAME] * TOKENS_PER_NAME)
                ids.extend(self._text_ids(name, str(message["name"])))
        ids.extend([_PRIMING] * REPLY_PRIMING_TOKENS)
        if len(ids) < CACHE_MIN_TOKENS:
            return []
        hasher = hashlib.blake2b(digest_size=16)
        if head:
            hasher.update(orjson.dumps(response_format, option=orjson.OPT_SORT_KEYS))
        raw = memoryview(ids.tobytes())
        block = CACHE_STEP_TOKENS * ids.itemsize
        out = []
        for end in range(block, len(raw) + 1, block):
            hasher.update(raw[end - block:end])
            if end // ids.itemsize >= CACHE_MIN_TOKENS:
                out.append(hasher.digest())
        return out

    def _text_ids(self, name: str, text: str) -> array[int]:
        """A text's token ids, cut into chunks exactly as `TokenCounter` counts it (so the lengths agree); the ids of
        each chunk of a long text are kept, so seed blocks and system prompts shared by many prompts are encoded
        once."""
        if not text:
            return array("I")
        encoding = get_encoding(name)
        if len(text) < _CHUNK_MIN:
            return array("I", encoding.encode_ordinary(text))
        ids = array("I")
        for chunk in _CHUNK_AT.split(text):
            key = _key(name, chunk)
            with self._lock:
                found = self._ids.get(key)
                if found is not None:
                    self._ids.move_to_end(key)
            if found is None:
                found = array("I", encoding.encode_ordinary(chunk))
                with self._lock:
                    self._ids[key] = found
                    if len(self._ids) > _IDS_KEPT:
                        self._ids.popitem(last=False)
            ids.extend(found)
        return ids

    # -- batches ----------------------------------------------------------------------------------------------
    def prepare(self, batch_id: str, first_index: int, lines: Sequence[tuple[str, list[bytes]]]) -> bool:
        """Note the prefixes of a batch's input lines `first_index`, `first_index + 1`, ... (model and hashes of
        each) before any of them runs. False when the lines before `first_index` are not known here (another
        process ran them): the caller gives them all from line 0."""
        with self._lock:
            state = self._batches.get(batch_id)
            if first_index == 0:
                state = self._batches[batch_id] = _BatchPrefixes()
            elif state is None or state.next_index < first_index:
                return False
            if state.next_index >= first_index + len(lines):
                return True
            for offset, (_, hashes) in enumerate(lines):
                index = first_index + offset
                if index < state.next_index:
                    continue
                for digest in hashes:
                    state.first.setdefault(digest, index)
            state.next_index = first_index + len(lines)
            return True

    def forget(self, batch_id: str) -> None:
        with self._lock:
            self._batches.pop(batch_id, None)

    # -- one line ---------------------------------------------------------------------------------------------
    def cached(self, model: str, hashes: list[bytes], when: float, ttl: float, batch_id: str | None = None,
               index: int = 0) -> int:
        """The cached tokens of a prompt with these prefix hashes at `when` (a batch line: its batch and input
        index); then its prefixes count as seen."""
        if not hashes:
            return 0
        with self._lock:
            seen = self._seen.setdefault(model, {})
            batch = self._batches.get(batch_id) if batch_id is not None else None
            cached = 0
            for step, digest in enumerate(hashes):
                if batch is not None and batch.first.get(digest, _NEVER) < index:
                    cached = CACHE_MIN_TOKENS + step * CACHE_STEP_TOKENS
                    continue
                entry = seen.get(digest)
                last = entry.other_than(batch_id) if entry is not None else None
                if last is None or when - last > ttl:
                    break
                cached = CACHE_MIN_TOKENS + step * CACHE_STEP_TOKENS
            for digest in hashes:
                entry = seen.get(digest)
                if entry is None:
                    seen[digest] = _Seen(when, batch_id)
                else:
                    entry.touch(when, batch_id)
            if len(seen) > _PRUNE_AT:
                self._seen[model] = {d: e for d, e in seen.items() if when - e.when <= ttl}
            return cached
