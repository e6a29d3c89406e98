"""The Batch API client: the only module that imports `openai`.

Backends:
- `embedded` (default): the built-in emulator, started on a loopback port for the life of this client, with its
  state under the workspace; costs nothing. If another process already runs the workspace's emulator, the
  client attaches to that one, and follows the state (starts or attaches again) if that process exits first.
- `openai`: the official API, or any compatible server named by OPENAI_BASE_URL (a `batchgen serve` elsewhere,
  another provider). Needs OPENAI_API_KEY. Spending money is always asked for explicitly.
- `azure`: Azure OpenAI (AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY). With OPENAI_API_VERSION set (a dated
  version such as 2025-03-01-preview) it speaks the classic `{endpoint}/openai/...?api-version=` shape through the
  SDK's AzureOpenAI; without it, Azure's v1 shape `{endpoint}/openai/v1/`. Azure takes batch lines of its own: the
  url `/chat/completions` and a deployment name as `model`. The shard files stay as they were compiled (OpenAI's
  lines, which the plan and the spec hash describe); each is rewritten line by line into Azure's form as it is
  uploaded (`azure_lines`). The deployment is $AZURE_OPENAI_DEPLOYMENT, else the job's `deployment`, else the
  model's own name.

SDK errors become `BackendError`, so nothing above this module depends on openai. The SDK's own retries stay on for
idempotent calls; batch creation runs with max_retries=0, because a retried create could start a second batch.
The embedded emulator's disk is the workspace's own: when it is full (the emulator's 500 says so, or it cannot
start) that is a `DiskError` like any other write of batchgen's, not a provider outage to wait out.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import openai
import orjson
from openai.types import Batch, FileObject

from batchgen.crashpoints import crash_point
from batchgen.disk import make_folder, no_space, write_error, writing
from batchgen.errors import BackendError, DiskError, is_retryable_status
from batchgen.recipe.pricing import is_loopback_url

if TYPE_CHECKING:
    from batchgen.emulator import AttachedEmulator, EmbeddedEmulator

BACKENDS = ("embedded", "openai", "azure")
SYNC_TIMEOUT = 300.0  # seconds for one synchronous answer: a long completion takes a minute or more
ENV_BACKEND = "BATCHGEN_BACKEND"
ENV_DEPLOYMENT = "AZURE_OPENAI_DEPLOYMENT"
T = TypeVar("T")


def choose_backend(flag: str | None = None, job_backend: str | None = None) -> str:
    """--backend > BATCHGEN_BACKEND > the job's `backend` > embedded."""
    backend = flag or os.environ.get(ENV_BACKEND) or job_backend or "embedded"
    if backend not in BACKENDS:
        raise BackendError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def served_locally(backend: str) -> bool:
    """Whether `backend` is a server on this machine other than the embedded emulator (`batchgen serve`, a local
    model server): its tokens are free (`recipe.pricing`). The base URL is the one the SDK will use."""
    if backend == "embedded":
        return False
    url = os.environ.get("AZURE_OPENAI_ENDPOINT") if backend == "azure" else os.environ.get("OPENAI_BASE_URL")
    return is_loopback_url(url or "https://api.openai.com/v1")


class BatchClient:
    """Upload, create, retrieve, list, cancel and download, with one-line errors."""

    def __init__(self, backend: str, *, emulator_dir: Path | None = None, timeout: float = 60.0):
        self.backend = backend
        self._timeout = timeout
        self._emulator: EmbeddedEmulator | AttachedEmulator | None = None
        self._sdk = self._connect(backend, emulator_dir, timeout)
        self.base_url = str(self._sdk.base_url).rstrip("/")

    def _connect(self, backend: str, emulator_dir: Path | None, timeout: float) -> openai.OpenAI:
        if backend == "embedded":
            if emulator_dir is None:
                raise BackendError("The embedded backend needs a workspace for its state")
            return self._open_emulator(emulator_dir, timeout)
        if backend == "azure":
            missing = [v for v in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY") if not os.environ.get(v)]
            if missing:
                raise BackendError(f"The azure backend needs {' and '.join(missing)} set in the environment")
            if os.environ.get("OPENAI_API_VERSION", "v1") != "v1":
                return openai.AzureOpenAI(timeout=timeout)
            endpoint = os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/")
            return openai.OpenAI(api_key=os.environ["AZURE_OPENAI_API_KEY"], base_url=f"{endpoint}/openai/v1/",
                                 timeout=timeout)
        if not os.environ.get("OPENAI_API_KEY"):
            raise BackendError("OPENAI_API_KEY is not set; export it to use --backend openai "
                               "(or drop --backend to run on the free embedded emulator)")
        return openai.OpenAI(timeout=timeout)

    def _open_emulator(self, state_dir: Path, timeout: float) -> openai.OpenAI:
        """Start the workspace's emulator, or attach to the one another process runs on the same state."""
        from batchgen.emulator import ConfigError, EmulatorStartError, StateInUse, connect_embedded

        try:
            self._emulator = connect_embedded(state_dir)
        except (ConfigError, StateInUse, EmulatorStartError) as error:
            raise BackendError(f"Cannot use the embedded emulator: {error}") from error
        except OSError as error:  # its state could not be written: a full disk, most likely
            raise write_error(error, _state(state_dir)) from error
        return openai.OpenAI(api_key="embedded", base_url=self._emulator.base_url, timeout=timeout)

    def _reconnect(self) -> bool:
        """After a connection failure: if the attached emulator's process has gone, switch to the emulator now
        serving the state (start one, or attach to the new holder). True if the client switched."""
        emulator = self._emulator
        if emulator is None or not emulator.attached or emulator.alive():
            return False
        sdk = self._open_emulator(emulator.state_dir, self._timeout)
        old, self._sdk = self._sdk, sdk
        old.close()
        self.base_url = str(sdk.base_url).rstrip("/")
        return True

    @property
    def loopback(self) -> bool:
        """True when the API is on this machine (the embedded emulator, `batchgen serve`, a local model server)."""
        return is_loopback_url(self.base_url)

    @property
    def identity(self) -> str:
        """Where batches live: recorded with each batch so ids from different servers never mix."""
        return "embedded" if self.backend == "embedded" else f"{self.backend}:{self.base_url}"

    def close(self) -> None:
        self._sdk.close()
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """`fn()` with SDK errors as BackendError.

        If it could not reach an attached embedded emulator whose process has exited, the client switches to
        the emulator now serving the state and calls `fn` once more (with `retry=False` it switches but
        re-raises: for calls that must not be repeated blindly).
        """
        try:
            return self._translated(what, fn)
        except BackendError as error:
            unreachable = isinstance(error.__cause__, openai.APIConnectionError)
            if not unreachable or not self._reconnect() or not retry:
                raise
        return self._translated(what, fn)

    def _translated(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except openai.APIStatusError as error:
            full = self._emulator_disk_full(error)
            if full is not None:
                raise full from error
            message = _error_message(error)
            code = error.status_code
            raise BackendError(f"{what} failed: HTTP {code}: {message}", status_code=code,
                               request_id=error.request_id,
                               transient=is_retryable_status(code)) from error
        except openai.APIConnectionError as error:
            raise BackendError(f"{what} failed: cannot reach {self.base_url} ({error.__cause__ or error})",
                               transient=True) from error

    def _emulator_disk_full(self, error: openai.APIStatusError) -> DiskError | None:
        """The DiskError for the embedded emulator's answer that its disk (the workspace's) refused a write."""
        if self._emulator is None or error.status_code != 500:
            return None
        from batchgen.emulator.apierror import SPACE_CODES

        body = error.body if isinstance(error.body, dict) else {}
        inner = body.get("error", body)
        code = inner.get("code") if isinstance(inner, dict) else None
        refused = {name: number for number, name in SPACE_CODES.items()}.get(str(code))
        return None if refused is None else no_space(_state(self._emulator.state_dir), refused)

    def deployment(self, job_deployment: str | None, model: str) -> str:
        """The name a request gives as `model` on Azure: $AZURE_OPENAI_DEPLOYMENT, the job's, or the model's."""
        return os.environ.get(ENV_DEPLOYMENT) or job_deployment or model

    def upload(self, path: Path, filename: str | None = None, *, deployment: str | None = None) -> FileObject:
        """Upload a batch input file, under `filename` (default: its own name); on Azure its lines go as Azure
        takes them, with `deployment` (see `deployment`) as every line's model."""
        name = filename or path.name
        if self.backend != "azure":
            with open(path, "rb") as handle:
                return self._call(f"Uploading {path.name}",
                                  lambda: self._sdk.files.create(file=(name, handle), purpose="batch"))
        with writing(f"Azure's copy of {path.name} (next to it)"), tempfile.TemporaryFile(dir=path.parent) as converted:
            with open(path, "rb") as source:
                azure_lines(source, converted, deployment)
            converted.seek(0)
            return self._call(f"Uploading {path.name}",
                              lambda: self._sdk.files.create(file=(name, converted), purpose="batch"))

    def create_batch(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> Batch:
        once = self._sdk.with_options(max_retries=0)
        if self.backend == "azure":
            endpoint = azure_url(endpoint)
        # Never repeated: a create that got no answer may have made a batch; reconciliation finds it by metadata.
        return self._call("Creating a batch", lambda: once.batches.create(
            input_file_id=input_file_id, endpoint=endpoint, completion_window="24h",  # type: ignore[arg-type]
            metadata=metadata), retry=False)

    def retrieve(self, batch_id: str) -> Batch:
        return self._call(f"Retrieving batch {batch_id}", lambda: self._sdk.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> Batch:
        return self._call(f"Cancelling batch {batch_id}", lambda: self._sdk.batches.cancel(batch_id))

    def list_batches(self, limit: int = 100) -> Iterator[Batch]:
        """The provider's batches, newest first, a page at a time: a caller that stops early asks for no more."""
        page = self._call("Listing batches", lambda: self._sdk.batches.list(limit=limit))
        while True:
            yield from page.data
            if not page.has_next_page():
                return
            page = self._call("Listing batches", page.get_next_page)

    def list_files(self) -> list[FileObject]:
        return self._call("Listing files", lambda: list(self._sdk.files.list(purpose="batch")))

    def delete_file(self, file_id: str) -> None:
        self._call(f"Deleting file {file_id}", lambda: self._sdk.files.delete(file_id))

    def complete(self, endpoint: str, body: dict[str, Any], *, timeout: float = SYNC_TIMEOUT,
                 deployment: str | None = None) -> dict[str, Any]:
        """One synchronous request, billed at standard price: POST `endpoint` (/v1/chat/completions) with `body`
        exactly as a batch line would carry it; the JSON answer as it came (for `batchgen preview`). On Azure,
        `deployment` stands for the body's model."""
        path = endpoint.removeprefix("/v1")
        if self.backend == "azure" and deployment is not None:
            body = {**body, "model": deployment}
        answer = self._call(f"POST {endpoint}", lambda: self._sdk.with_options(timeout=timeout).post(
            path, body=body, cast_to=object))
        if not isinstance(answer, dict):
            raise BackendError(f"POST {endpoint} answered {type(answer).__name__}, not a JSON object")
        return answer

    def organization_pages(self, path: str, params: dict[str, Any], admin_key: str) -> Iterator[dict[str, Any]]:
        """GET an organization endpoint (`/organization/usage/completions`, `/organization/costs`) with the admin key,
        page after page (`next_page`); each page's JSON with its numbers as exact Decimals."""
        sdk = self._sdk.with_options(api_key=admin_key)
        page: str | None = None
        while True:
            query = {**params, **({"page": page} if page else {})}
            text = self._call(f"GET {path}", lambda q=query: sdk.get(  # type: ignore[misc]
                path, options={"params": q}, cast_to=str))
            try:
                body = json.loads(text, parse_float=Decimal)
            except ValueError:
                raise BackendError(f"GET {path} answered something that is not JSON") from None
            if not isinstance(body, dict):
                raise BackendError(f"GET {path} answered {type(body).__name__}, not a page")
            yield body
            page = body.get("next_page")
            if not body.get("has_more") or not page:
                return

    def download(self, file_id: str, target: Path) -> Path:
        """Stream a file's content to `target` through a temporary file, so it never exists half-written (a full
        disk is one DiskError naming `target`, and the temporary file is removed)."""
        what = f"result file {target}"
        make_folder(target.parent, what, "check --workspace")
        tmp = target.with_name(target.name + ".part")

        def fetch() -> None:
            with self._sdk.files.with_streaming_response.content(file_id) as response:
                with writing(what), open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        crash_point("download")
                    out.flush()
                    os.fsync(out.fileno())

        try:
            self._call(f"Downloading file {file_id}", fetch)
            with writing(what):
                tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target


def azure_url(url: str) -> str:
    """Azure's form of a batch line's url and a batch's endpoint: `/v1/chat/completions` -> `/chat/completions`."""
    return url.removeprefix("/v1")


def azure_lines(source: IO[bytes], target: IO[bytes], deployment: str | None) -> None:
    """Copy batch lines from `source` to `target` as Azure takes them: the url without `/v1`, and `deployment`
    (when given) as the body's model. Everything else, custom_id and order included, stays as it was."""
    for raw in source:
        if not raw.strip():
            continue
        line = orjson.loads(raw)
        line["url"] = azure_url(line["url"])
        if deployment is not None:
            line["body"]["model"] = deployment
        target.write(orjson.dumps(line) + b"\n")


def is_transient(error: BackendError) -> bool:
    """A fault worth waiting out: no answer at all, 408, 409, 429 or a 5xx (set where the API call failed)."""
    return error.transient


def _state(state_dir: Path) -> str:
    return f"the embedded emulator's state {state_dir}"


def _error_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)
