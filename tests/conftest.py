from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test can reach the real API, a real ledger or a real workspace."""
    for name in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY",
                 "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION",
                 "BATCHGEN_BACKEND", "BATCHGEN_LEDGER", "BATCHGEN_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("BATCHGEN_WORKSPACE", str(tmp_path_factory.mktemp("workspace") / ".batchgen"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="Rewrite the golden files under tests/fixtures/golden instead of comparing with them")


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    """True when pytest runs with --update-goldens."""
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture(autouse=True)
def no_user_price_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A BATCHGEN_PRICES file of the developer's shell never changes a test's prices."""
    monkeypatch.delenv("BATCHGEN_PRICES", raising=False)
