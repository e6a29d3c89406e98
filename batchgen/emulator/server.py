"""Running the emulator: embedded in a thread on an ephemeral loopback port, or as `batchgen serve`."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import uvicorn

from batchgen.emulator.app import build_app
from batchgen.emulator.config import EmulatorConfig
from batchgen.emulator.control_client import EmulatorControl
from batchgen.emulator.engine import Engine, StateInUse
from batchgen.emulator.executor import Executor
from batchgen.emulator.shared import AttachedEmulator, Published, attach, publish, read_published, withdraw

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class EmulatorStartError(RuntimeError):
    """The server did not come up."""


def _uvicorn_config(app: Any, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                          ws="none")


class EmbeddedEmulator:
    """An emulator on 127.0.0.1:<ephemeral> in a background thread; a context manager.

    `config` is an EmulatorConfig (used as is) or a mapping of overrides applied over the `embedded` preset and
    `<state_dir>/config.json`. The control API is on unless `config` turns it off. Constructing it takes
    the state directory's lock (waiting up to `lock_timeout` seconds, else StateInUse); while it serves, its
    address is published in `<state_dir>/server.json` for other processes to attach to (see `shared`).
    """

    attached = False

    def __init__(self, state_dir: str | Path, config: EmulatorConfig | Mapping[str, Any] | None = None, *,
                 token: str | None = None, executor: Executor | None = None,
                 lock_timeout: float = 10.0) -> None:
        if isinstance(config, EmulatorConfig):
            self.config = config
        else:
            self.config = EmulatorConfig.load(state_dir, "embedded", config)
        self.token = token
        self.state_dir = Path(state_dir)
        self.engine = Engine(state_dir, self.config, executor, lock_timeout=lock_timeout)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.published = Published.new(self.base_url, control=self.config.control, auth=bool(token))
        app = build_app(self.engine, token=token, control=self.config.control,
                        identity=self.published.identity())
        self._server = uvicorn.Server(_uvicorn_config(app, "warning"))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def control(self) -> EmulatorControl:
        return EmulatorControl(self.base_url, self.token)

    def alive(self) -> bool:
        """True while this process serves."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> EmbeddedEmulator:
        """Start serving; returns once the server accepts connections."""
        self.engine.start()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="batchgen-emulator-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EmulatorStartError("the embedded Batch API emulator did not start")
            time.sleep(0.002)
        try:
            publish(self.state_dir, self.published)
        except BaseException:  # a full disk: no emulator half up
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Withdraw the published address, stop serving and the worker, release the state; idempotent."""
        if self._thread is not None:
            withdraw(self.state_dir, self.published)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.engine.stop()
        self._socket.close()

    def __enter__(self) -> EmbeddedEmulator:
        return self.start() if self._thread is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def start_embedded(state_dir: str | Path, config: EmulatorConfig | Mapping[str, Any] | None = None, *,
                   token: str | None = None, executor: Executor | None = None) -> EmbeddedEmulator:
    """Start an embedded emulator; call `.stop()` or use it as a context manager."""
    return EmbeddedEmulator(state_dir, config, token=token, executor=executor).start()


def connect_embedded(state_dir: str | Path, timeout: float = 10.0) -> EmbeddedEmulator | AttachedEmulator:
    """The state directory's emulator: started here if the state is free, else the holder's, attached to.

    Waits up to `timeout` seconds for a holder that is starting or stopping to publish its server or to
    release the state; StateInUse if neither happens, or if the holder requires a token.
    """
    state = Path(state_dir)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return EmbeddedEmulator(state, lock_timeout=0.0).start()
        except StateInUse:
            pass
        attached = attach(state)
        if attached is not None:
            return attached
        published = read_published(state)
        if published is not None and published.auth:
            raise StateInUse(f"the emulator state {state} is served by pid {published.pid} with a token; "
                             "connect to it as an OpenAI-compatible server instead")
        if time.monotonic() > deadline:
            holder = f"pid {published.pid}" if published is not None else "another process"
            raise StateInUse(f"the emulator state {state} is held by {holder}, which does not answer")
        time.sleep(0.05)


class _QuietSignalsServer(uvicorn.Server):
    """A uvicorn server that shuts down on SIGINT/SIGTERM and then returns normally (no re-raised signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        import signal

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (ValueError)."""
    if host not in LOOPBACK and not token:
        raise ValueError(f"refusing to serve on {host} without --token: anyone who can reach it could use it")


class _ServeLog(logging.StreamHandler[TextIO]):
    """stderr, in uvicorn's format ("INFO:     ...")."""

    def __init__(self) -> None:
        from uvicorn.logging import DefaultFormatter

        super().__init__()
        self.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))


def _log_like_uvicorn(log_level: str) -> None:
    """The emulator's own lines (a client gone mid-request, a request that failed) go to stderr at the server's
    log level and in uvicorn's format, so the serve log reads as one log; otherwise only warnings would show, and
    without a level."""
    logger = logging.getLogger("batchgen.emulator")
    if not any(isinstance(h, _ServeLog) for h in logger.handlers):
        logger.addHandler(_ServeLog())
    logger.setLevel(log_level.upper())
    logger.propagate = False


def _announce_upstream(engine: Engine) -> None:
    """With an upstream, probe in the background what structured output it takes, so the serve log says it at
    start while the server already listens (a line that needs the answer waits for the probe)."""
    from batchgen.emulator.upstream import UpstreamExecutor

    inner = getattr(engine.executor, "inner", engine.executor)
    if isinstance(inner, UpstreamExecutor):
        threading.Thread(target=inner.announce, name="batchgen-emulator-probe", daemon=True).start()


def serve(state_dir: str | Path, config: EmulatorConfig, *, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, log_level: str = "info", admin_key: str | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; raises ValueError for a public host without a token.

    `admin_key`: the only key the Usage and Costs endpoints accept (default: any key starting `sk-admin-`)."""
    check_bind(host, token)
    engine = Engine(state_dir, config, lock_timeout=0.0)
    engine.start()
    try:
        app = build_app(engine, token=token, control=config.control, admin_key=admin_key)
        uv_config = _uvicorn_config(app, log_level)
        _log_like_uvicorn(log_level)
        _announce_upstream(engine)
        uv_config.host, uv_config.port = host, port
        _QuietSignalsServer(uv_config).run()
    finally:
        engine.stop()
