"""The API's error envelope: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

from __future__ import annotations

import errno
import os
from typing import Any


class APIError(Exception):
    """An error answer of the emulated API; rendered as the error envelope by the app."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, self.param, self.code)


def error_envelope(message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> dict[str, Any]:
    """The body of every non-2xx answer."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No {kind} found with id '{object_id}'.")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# The code of a 500 whose cause is the emulator's own disk, by what refused the write; a client that runs the
# emulator itself (batchgen's embedded backend) reads it as its own full disk rather than a provider's outage.
SPACE_CODES = {errno.ENOSPC: "emulator_disk_full", errno.EDQUOT: "emulator_quota_exceeded",
               errno.EFBIG: "emulator_file_too_large"}
_SPACE_WORDS = {
    errno.ENOSPC: ("The emulator's disk is full", "Free some space on the emulator's disk"),
    errno.EDQUOT: ("The emulator's disk quota is used up", "Free some space on the emulator's disk (or have its quota "
                   "raised)"),
    errno.EFBIG: ("The emulator reached the file size limit", "Raise the emulator's file size limit (ulimit -f)"),
}


def disk_full(error: OSError, consequence: str) -> APIError:
    """The 500 for a write the emulator's disk refused (ENOSPC, EDQUOT or EFBIG), saying what it means.

    The status and type are those of any server-side failure of the API; `x-should-retry: false` keeps clients
    from asking again at once, as a full disk does not clear up in a second."""
    code = error.errno if error.errno in SPACE_CODES else errno.ENOSPC
    what, remedy = _SPACE_WORDS[code]
    return APIError(500, f"{what} ({error.strerror or os.strerror(code)}): {consequence}. {remedy} and try again.",
                    type_="server_error", code=SPACE_CODES[code], headers={"x-should-retry": "false"})
