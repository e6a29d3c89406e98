"""Prices: exact Decimals with their source; batch = half of standard; overrides; unknown models fail."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path

import pytest

from batchgen.errors import PricingError
from batchgen.recipe.pricing import FREE_SOURCE, LOCAL_SOURCE, clear_cache, get_price, request_cost
from batchgen.run.client import served_locally


@pytest.fixture(autouse=True)
def fresh_prices() -> None:
    clear_cache()


def test_gpt_4o_mini_batch_prices() -> None:
    price = get_price("gpt-4o-mini")
    assert price.batch.input == Decimal("0.075") and price.batch.output == Decimal("0.3")
    assert price.standard.input == Decimal("0.15") and price.standard.output == Decimal("0.6")
    assert price.source.startswith(f"genai-prices {version('genai-prices')} (openai/gpt-4o-mini")


@pytest.mark.parametrize(
    ("model", "batch_in", "batch_cached", "batch_out"),
    [
        ("gpt-4o-mini", "0.075", "0.075", "0.3"),
        ("gpt-4.1-nano", "0.05", "0.05", "0.2"),  # no batch cached rate: cached input at the batch input rate
        ("gpt-5-nano", "0.025", "0.0025", "0.2"),
        ("gpt-5-mini", "0.125", "0.0125", "1"),
        ("gpt-5.4", "1.25", "0.125", "7.50"),
        ("o4-mini", "0.55", "0.55", "2.2"),  # genai-prices keeps the standard cached 0.275 under batch: not billed
        ("gpt-4.1", "1", "1", "4"),
        ("gpt-4o", "1.25", "1.25", "5"),
        ("text-embedding-3-small", "0.01", "0.01", "0"),
        ("text-embedding-3-large", "0.065", "0.065", "0"),
    ],
)
def test_batch_prices_match_the_spec_table(
    model: str, batch_in: str, batch_cached: str, batch_out: str
) -> None:
    rates = get_price(model).batch
    assert (rates.input, rates.cached_input, rates.output) == (
        Decimal(batch_in),
        Decimal(batch_cached),
        Decimal(batch_out),
    )


def test_cached_input_without_a_batch_cached_rate_pays_the_batch_input_rate(tmp_path: Path) -> None:
    """gpt-4o-mini's Batch tab shows no cached rate: 1,000 cached prompt tokens cost what 1,000 uncached ones do,
    priced from genai-prices and from a price table without `batch_cached_input` alike; gpt-5-nano has one."""
    mini = get_price("gpt-4o-mini")
    assert mini.cost(2048, 1024, 0) == mini.cost(2048, 0, 0) == Decimal(2048) * Decimal("0.075") / 1_000_000
    (tmp_path / "prices.toml").write_text('[models."gpt-4o-mini"]\ninput = "0.15"\ncached_input = "0.075"\n'
                                          'output = "0.60"\n', encoding="utf-8")
    table = get_price("gpt-4o-mini", job_dir=tmp_path)
    assert table.batch.cached_input == table.batch.input == Decimal("0.075")
    assert table.standard.cached_input == Decimal("0.075")
    nano = get_price("gpt-5-nano")
    assert nano.cost(2048, 1024, 0) == (1024 * Decimal("0.025") + 1024 * Decimal("0.0025")) / 1_000_000


def test_request_cost_is_exact() -> None:
    cost = request_cost("gpt-4o-mini", prompt_tokens=768, cached_tokens=0, completion_tokens=612)
    assert cost.usd == Decimal("0.0002412")  # (768 * 0.075 + 612 * 0.3) / 1e6
    assert isinstance(cost.usd, Decimal) and "genai-prices" in cost.source
    one_m = request_cost("gpt-4o-mini", 1_000_000, 0, 1_000_000)
    assert one_m.usd == Decimal("0.375")
    standard = request_cost("gpt-4o-mini", 1_000_000, 0, 1_000_000, batch=False)
    assert standard.usd == Decimal("0.75")


def test_cached_and_reasoning_tokens() -> None:
    # gpt-5-nano: cached batch input 0.0025; reasoning tokens are inside completion tokens, not added again.
    cost = request_cost(
        "gpt-5-nano", prompt_tokens=1000, cached_tokens=400, completion_tokens=500, reasoning_tokens=300
    )
    assert (
        cost.usd == (Decimal(600) * Decimal("0.025") + 400 * Decimal("0.0025") + 500 * Decimal("0.2")) / 10**6
    )
    with pytest.raises(PricingError, match="impossible usage"):
        request_cost("gpt-5-nano", prompt_tokens=10, cached_tokens=20)


def test_long_context_tier_applies_per_request() -> None:
    below = request_cost("gpt-5.4", 272_000, 0, 1000).usd
    above = request_cost("gpt-5.4", 272_001, 0, 1000).usd
    assert below == (272_000 * Decimal("1.25") + 1000 * Decimal("7.50")) / 10**6
    assert above == (272_001 * Decimal("2.50") + 1000 * Decimal("11.25")) / 10**6
    sol = request_cost("gpt-6-sol", 300_000, 0, 1000)
    assert sol.usd == Decimal("0.6075") and "genai-prices" in sol.source


def test_unknown_model_says_how_to_add_a_price() -> None:
    with pytest.raises(PricingError, match=r"No price known for model 'gpt-9'.*prices.toml.*BATCHGEN_PRICES"):
        get_price("gpt-9")


def test_user_price_file_in_job_dir(tmp_path: Path) -> None:
    (tmp_path / "prices.toml").write_text(
        '[models."ft:gpt-4o-mini:acme::x"]\ninput = "0.30"\noutput = 1.2\nsource = "our fine-tune"\n'
    )
    price = get_price("ft:gpt-4o-mini:acme::x", job_dir=tmp_path)
    assert price.standard.output == Decimal("1.2")
    assert price.batch.input == Decimal("0.150") and price.batch.output == Decimal("0.60")
    digest = hashlib.sha256((tmp_path / "prices.toml").read_bytes()).hexdigest()[:12]
    assert price.source == f"{tmp_path / 'prices.toml'} (sha256 {digest}): our fine-tune"


def test_a_price_file_edited_is_a_new_source_version(tmp_path: Path) -> None:
    """Two texts of one price file are two sources: results priced by each keep telling them apart."""
    entry = '[models."ft:gpt-4o-mini:acme::x"]\ninput = "{}"\noutput = "1.2"\n'
    (tmp_path / "prices.toml").write_text(entry.format("0.30"))
    first = get_price("ft:gpt-4o-mini:acme::x", job_dir=tmp_path)
    (tmp_path / "prices.toml").write_text(entry.format("0.40"))
    second = get_price("ft:gpt-4o-mini:acme::x", job_dir=tmp_path)
    assert first.source != second.source and second.standard.input == Decimal("0.40")


def test_a_free_backend_costs_nothing_unless_a_price_file_names_the_model(tmp_path: Path) -> None:
    free = get_price("gpt-4o-mini", free=True)
    assert free.cost(5_000, 1_000, 3_000) == 0 and free.cost(5_000, 0, 3_000, batch=False) == 0
    assert free.source.startswith("free")
    (tmp_path / "prices.toml").write_text('[models."gpt-4o-mini"]\ninput = "0.01"\noutput = "0.02"\n')
    priced = get_price("gpt-4o-mini", job_dir=tmp_path, free=True)
    assert priced.cost(1_000_000, 0, 1_000_000, batch=False) == Decimal("0.03")
    with pytest.raises(PricingError):
        get_price("no-such-model", job_dir=tmp_path)  # not free: still an error
    assert get_price("no-such-model", free=True).cost(10, 0, 10) == 0


def test_a_local_server_costs_nothing_unless_a_price_file_names_the_model(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    local = get_price("gpt-4o-mini", local=True)
    assert local.cost(5_000, 1_000, 3_000) == 0 and local.source == LOCAL_SOURCE
    assert local.source.startswith("free (local server)")
    assert get_price("gpt-4o-mini", local=True, free=True).source == FREE_SOURCE  # the job's own word first
    (tmp_path / "prices.toml").write_text('[models."gpt-4o-mini"]\ninput = "0.01"\noutput = "0.02"\n')
    assert get_price("gpt-4o-mini", job_dir=tmp_path, local=True).cost(1_000_000, 0, 1_000_000) == Decimal("0.015")
    env_file = tmp_path / "env.toml"
    env_file.write_text('[models."gpt-4o-mini"]\ninput = "2"\noutput = "2"\n')
    monkeypatch.setenv("BATCHGEN_PRICES", str(env_file))
    assert get_price("gpt-4o-mini", local=True).cost(1_000_000, 0, 0) == Decimal("1")


@pytest.mark.parametrize(("backend", "env", "local"), [
    ("embedded", {}, False),  # a dry run of the real job: priced as the real model
    ("openai", {}, False),
    ("openai", {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, True),
    ("openai", {"OPENAI_BASE_URL": "http://localhost:11434/v1"}, True),
    ("openai", {"OPENAI_BASE_URL": "http://[::1]:8000/v1"}, True),
    ("openai", {"OPENAI_BASE_URL": "https://gpu-box.example:8000/v1"}, False),
    ("azure", {"AZURE_OPENAI_ENDPOINT": "https://acme.openai.azure.com"}, False),
    ("azure", {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.2:9000"}, True),
])
def test_a_backend_is_local_when_its_base_url_is_a_loopback_address(monkeypatch: pytest.MonkeyPatch, backend: str,
                                                                    env: dict[str, str], local: bool) -> None:
    for name in ("OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert served_locally(backend) is local


def test_env_price_file_and_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[models."gpt-4o-mini*"]\ninput = "1"\noutput = "2"\nbatch_input = "0.4"\n')
    monkeypatch.setenv("BATCHGEN_PRICES", str(path))
    price = get_price("gpt-4o-mini-2024-07-18")
    assert price.batch.input == Decimal("0.4") and price.batch.output == Decimal("1")
    assert get_price("gpt-5-nano").source.startswith("genai-prices")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[models."m"]\noutput = "1"\n', "'input' is required"),
        ('[models."m"]\ninput = "x"\noutput = "1"\n', "is not a number"),
        ('[models."m"]\ninput = "-1"\noutput = "1"\n', "must be a price >= 0"),
        ('[models."m"\n', "TOML syntax error"),
    ],
)
def test_bad_price_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "prices.toml").write_text(content)
    with pytest.raises(PricingError, match=message):
        get_price("m", job_dir=tmp_path)


def test_price_date_is_today_by_default() -> None:
    before = datetime.now(timezone.utc).date().isoformat()
    source = get_price("gpt-4o-mini").source
    after = datetime.now(timezone.utc).date().isoformat()  # the test may run across midnight
    assert f"prices of {before}" in source or f"prices of {after}" in source
