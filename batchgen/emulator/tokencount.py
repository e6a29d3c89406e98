"""Token counts with a cache, exactly equal to `batchgen.recipe.tokens.count_messages` / `count_text`.

Prompts of a batch repeat big blocks (system prompt, seed examples), so counts are cached per distinct content. A
long content that misses the cache is cut at line starts into chunks that are counted (and cached) separately. The
cut points are pre-tokenization boundaries of both cl100k_base and o200k_base (no piece of their split pattern
contains a newline followed by a character other than whitespace or "/"), so the chunk counts add up exactly.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

from batchgen.recipe.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    UnknownEncoding,
    encoding_name_for_model,
    get_encoding,
)

FALLBACK_ENCODING = "o200k_base"
_CHUNK_AT = re.compile(r"(?<=\n)(?=[^\s/])")
_CHUNK_MIN = 512
_KEY_MAX = 256


class TokenCounter:
    """Cached, thread-safe token counting for one emulator."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._new: dict[tuple[str, str | bytes], int] = {}
        self._old: dict[tuple[str, str | bytes], int] = {}
        self._names: dict[str, str] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def encoding_name(self, model: str) -> str:
        """The model's encoding; models of unknown family are counted with o200k_base."""
        name = self._names.get(model)
        if name is None:
            try:
                name = encoding_name_for_model(model)
            except UnknownEncoding:
                name = FALLBACK_ENCODING
            self._names[model] = name
        return name

    def encoding(self, model: str) -> tiktoken.Encoding:
        return get_encoding(self.encoding_name(model))

    def text(self, text: str, model: str, *, unique: bool = False) -> int:
        """Tokens of a text, as `count_text`. With `unique` (a text unlikely to come again, such as a generated
        answer) only its chunks are cached, not the whole text."""
        name = self.encoding_name(model)
        if unique and len(text) >= _CHUNK_MIN:
            return sum(self._count_chunk(name, chunk) for chunk in _CHUNK_AT.split(text))
        return self._count(name, text)

    def messages(self, messages: Iterable[Mapping[str, Any]], model: str) -> int:
        """Prompt tokens of chat messages, as `count_messages`."""
        name = self.encoding_name(model)
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            total += self._count(name, str(message.get("role", "")))
            total += self._count(name, _content_text(message.get("content")))
            if message.get("name"):
                total += TOKENS_PER_NAME + self._count(name, str(message["name"]))
        return total

    def _count(self, name: str, text: str) -> int:
        if not text:
            return 0
        key = _key(name, text)
        found = self._lookup(key)
        if found is not None:
            return found
        if len(text) >= _CHUNK_MIN:
            count = sum(self._count_chunk(name, chunk) for chunk in _CHUNK_AT.split(text))
        else:
            count = len(get_encoding(name).encode_ordinary(text))
        self._remember(key, count)
        return count

    def _count_chunk(self, name: str, chunk: str) -> int:
        key = _key(name, chunk)
        found = self._lookup(key)
        if found is None:
            found = len(get_encoding(name).encode_ordinary(chunk))
            self._remember(key, found)
        return found

    def _lookup(self, key: tuple[str, str | bytes]) -> int | None:
        found = self._new.get(key)
        if found is None:
            found = self._old.get(key)
            if found is not None:
                self._remember(key, found)
        return found

    def _remember(self, key: tuple[str, str | bytes], count: int) -> None:
        """Two generations: when the new one fills up, it becomes the old one and the old one is dropped, so
        entries in use survive (a cheap approximation of LRU)."""
        with self._lock:
            if len(self._new) >= self._max:
                self._old = self._new
                self._new = {}
            self._new[key] = count


def _key(name: str, text: str) -> tuple[str, str | bytes]:
    """Short texts are their own key; long ones are keyed by a 128-bit hash, so the cache stays small."""
    if len(text) <= _KEY_MAX:
        return name, text
    return name, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)
