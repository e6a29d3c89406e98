"""Token counts with a cache, exactly equal to `batchgen.tokens.count_messages` / `count_text`.

Prompts of a batch repeat big blocks (system prompt, seed examples), so counts are cached per distinct content. A
long content that misses the cache is cut at line starts into chunks that are counted (and cached) separately. The
cut points are pre-tokenization boundaries of both cl100k_base and o200k_base (no piece of their split pattern
contains a newline followed by a character other than whitespace or "/"), so the chunk counts add up exactly.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

from batchgen.tokens import (
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


class TokenCounter:
    """Cached, thread-safe token counting for one emulator."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._cache: dict[tuple[str, str], int] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    @staticmethod
    def encoding_name(model: str) -> str:
        """The model's encoding; models of unknown family are counted with o200k_base."""
        try:
            return encoding_name_for_model(model)
        except UnknownEncoding:
            return FALLBACK_ENCODING

    def encoding(self, model: str) -> tiktoken.Encoding:
        return get_encoding(self.encoding_name(model))

    def text(self, text: str, model: str) -> int:
        """Tokens of a text, as `count_text`."""
        return self._count(self.encoding_name(model), text)

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
        key = (name, text)
        found = self._cache.get(key)
        if found is not None:
            return found
        if len(text) >= _CHUNK_MIN:
            count = sum(self._count_chunk(name, chunk) for chunk in _CHUNK_AT.split(text))
        else:
            count = len(get_encoding(name).encode_ordinary(text))
        self._remember(key, count)
        return count

    def _count_chunk(self, name: str, chunk: str) -> int:
        key = (name, chunk)
        found = self._cache.get(key)
        if found is None:
            found = len(get_encoding(name).encode_ordinary(chunk))
            self._remember(key, found)
        return found

    def _remember(self, key: tuple[str, str], count: int) -> None:
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = count


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)
