"""A local emulator of OpenAI's Files and Batch API (plus synchronous chat and embeddings).

    from batchgen.emulator import start_embedded

    with start_embedded(".batchgen/emulator") as emulator:
        client = openai.OpenAI(base_url=emulator.base_url, api_key="local")
        ...

The emulator imports nothing from batchgen except `batchgen.tokens`.
"""

from batchgen.emulator.config import ConfigError, EmulatorConfig, serve_overrides
from batchgen.emulator.control import ControlError, EmulatorControl
from batchgen.emulator.engine import Engine, StateInUse
from batchgen.emulator.executor import Executor, LineRequest, LineResult
from batchgen.emulator.server import EmbeddedEmulator, EmulatorStartError, check_bind, serve, start_embedded

__all__ = [
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
    "serve",
    "serve_overrides",
    "start_embedded",
]
