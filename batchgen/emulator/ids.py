"""Identifiers shaped like the real API's: `batch_<32 hex>`, `file-<22 base58>`, `batch_req_<32 hex>`, `req_<32 hex>`.

Random ids come from `secrets`; derived ids (output files, request rows) are hashes of their parents, so that a step
repeated after a crash produces the same id again.
"""

from __future__ import annotations

import hashlib
import secrets

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(raw: bytes, length: int) -> str:
    number = int.from_bytes(raw, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 58)
        chars.append(_BASE58[rest])
    return "".join(chars)


def digest(*parts: object, size: int = 16) -> bytes:
    """A stable hash of the parts (never Python's randomized `hash`)."""
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.digest()


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def new_file_id() -> str:
    return "file-" + _base58(secrets.token_bytes(24), 22)


def derived_file_id(*parts: object) -> str:
    return "file-" + _base58(digest("file", *parts, size=24), 22)


def row_ids(batch_id: str, line: int) -> tuple[str, str]:
    """The `batch_req_` id of a result row and the `req_` id of its response, from one hash."""
    raw = digest("row", batch_id, line, size=32).hex()
    return "batch_req_" + raw[:32], "req_" + raw[32:]


def batch_request_id(batch_id: str, line: int) -> str:
    return row_ids(batch_id, line)[0]


def request_id(*parts: object) -> str:
    return "req_" + digest("req", *parts).hex()


def random_request_id() -> str:
    return "req_" + secrets.token_hex(16)


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def completion_id(*parts: object) -> str:
    return "chatcmpl-" + "".join(_ALNUM[b % 62] for b in digest("cmpl", *parts, size=29))
