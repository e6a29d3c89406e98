"""A local emulator of OpenAI's Files and Batch API (plus synchronous chat and embeddings).

    from batchgen.emulator import start_embedded

    with start_embedded(".batchgen/emulator") as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="local")
        ...

`start_embedded` runs the emulator in this process (it waits for the state directory if another process holds
it); `connect_embedded` does that when the state is free and otherwise attaches to the holder's server.

The emulator imports nothing from batchgen except `batchgen.recipe.tokens` and `batchgen.recipe.pricing`. It logs
to the `batchgen.emulator` logger: `batchgen serve` shows it on stderr; embedded, its lines go wherever the
application sends its logs, and nowhere by default, so that a command using it prints only its own lines (its
errors come back as API answers).
"""

import logging

from batchgen.emulator.config import ConfigError, EmulatorConfig, serve_overrides
from batchgen.emulator.control_client import ControlError, EmulatorControl
from batchgen.emulator.engine import Engine, StateInUse
from batchgen.emulator.executor import Executor, LineRequest, LineResult
from batchgen.emulator.server import (
    EmbeddedEmulator,
    EmulatorStartError,
    check_bind,
    connect_embedded,
    serve,
    start_embedded,
)
from batchgen.emulator.shared import AttachedEmulator

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AttachedEmulator",
    "ConfigError",
    "ControlError",
    "EmbeddedEmulator",
    "EmulatorConfig",
    "EmulatorControl",
    "EmulatorStartError",
    "Engine",
    "Executor",
    "LineRequest",
    "LineResult",
    "StateInUse",
    "check_bind",
    "connect_embedded",
    "serve",
    "serve_overrides",
    "start_embedded",
]
