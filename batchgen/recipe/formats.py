"""Dataset formats: ShareGPT, Alpaca and ChatML (OpenAI fine-tuning `messages`).

Each format is a pydantic model (extra="forbid", so a typo in a seed file fails loudly). All three convert to and from
one neutral form, a list of `Turn`s (role system/user/assistant, content), which is what validation and export work on.
`response_schema()` derives the strict JSON schema used as `response_format` for structured output.

An embeddings job's dataset has a format of its own, `embeddings`: one `{"input": text, "embedding": [numbers]}`
object per line. It holds no turns, so it converts to and from none of the chat formats.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FormatName = Literal["sharegpt", "alpaca", "chatml"]
FORMATS: tuple[str, ...] = ("sharegpt", "alpaca", "chatml")
EMBEDDINGS_FORMAT = "embeddings"
DATASET_FORMATS: tuple[str, ...] = (*FORMATS, EMBEDDINGS_FORMAT)
Role = Literal["system", "user", "assistant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Turn(_Strict):
    role: Role
    content: str


class ShareGPTMessage(_Strict):
    from_: Literal["system", "human", "gpt"] = Field(alias="from")
    value: str


class ShareGPTExample(_Strict):
    conversations: list[ShareGPTMessage] = Field(min_length=1)


class AlpacaExample(_Strict):
    instruction: str
    input: str = ""
    output: str


class ChatMLMessage(_Strict):
    role: Role
    content: str


class ChatMLExample(_Strict):
    messages: list[ChatMLMessage] = Field(min_length=1)


MODELS: dict[str, type[_Strict]] = {
    "sharegpt": ShareGPTExample,
    "alpaca": AlpacaExample,
    "chatml": ChatMLExample,
}

_SHAREGPT_TO_ROLE: dict[str, Role] = {"system": "system", "human": "user", "gpt": "assistant"}
_ROLE_TO_SHAREGPT = {role: name for name, role in _SHAREGPT_TO_ROLE.items()}


def parse_example(data: Any, fmt: str) -> _Strict:
    """Validate one example of a format; raises pydantic.ValidationError."""
    return MODELS[fmt].model_validate(data)


def to_turns(example: _Strict) -> list[Turn]:
    if isinstance(example, ShareGPTExample):
        return [Turn(role=_SHAREGPT_TO_ROLE[m.from_], content=m.value) for m in example.conversations]
    if isinstance(example, ChatMLExample):
        return [Turn(role=m.role, content=m.content) for m in example.messages]
    if isinstance(example, AlpacaExample):
        prompt = example.instruction if not example.input else f"{example.instruction}\n\n{example.input}"
        return [Turn(role="user", content=prompt), Turn(role="assistant", content=example.output)]
    raise TypeError(f"not an example: {type(example).__name__}")


class NotRepresentable(ValueError):
    """The turns cannot be written in the requested format (e.g. a multi-turn chat as Alpaca)."""


def from_turns(turns: list[Turn], fmt: str) -> dict[str, Any]:
    """The JSON-ready dict of an example in a format."""
    if fmt == "sharegpt":
        return {"conversations": [{"from": _ROLE_TO_SHAREGPT[t.role], "value": t.content} for t in turns]}
    if fmt == "chatml":
        return {"messages": [{"role": t.role, "content": t.content} for t in turns]}
    if fmt == "alpaca":
        body = [t for t in turns if t.role != "system"]
        if len(body) != 2 or body[0].role != "user" or body[1].role != "assistant":
            raise NotRepresentable("Alpaca holds one instruction and one answer; this example has "
                                   f"{len(body)} non-system turns")
        return {"instruction": body[0].content, "input": "", "output": body[1].content}
    raise ValueError(f"unknown format {fmt!r}")


def dump_example(example: _Strict) -> dict[str, Any]:
    return example.model_dump(by_alias=True)


TURNS_KEY: dict[str, str] = {"sharegpt": "conversations", "chatml": "messages"}
"""The key of a format's turns array (Alpaca has none: one instruction and one answer)."""


def response_schema(fmt: str, examples: int | None = None, turns: tuple[int, int] | None = None) -> dict[str, Any]:
    """Strict JSON schema of the generation response: {"examples": [<example>, ...]}.

    Derived from the format's pydantic model, with $refs inlined and every object closed and fully required, as
    OpenAI's strict structured output demands.

    `examples` (the examples a request asks for) bounds the list to 1..examples: an answer may hold fewer than asked
    (they are still useful, and the job's overgeneration and top-ups make up the shortfall), but never none, and
    never more, which would only spend output tokens on examples nobody asked for. Requiring all of them would make
    a grammar-constrained decoder pad out the list with whatever it can still produce. `turns` (the job's
    min_turns and max_turns, which leave out a leading system turn) bounds each conversation's turns to
    min_turns..max_turns + 1. Both are left out when None: a fine-tuned OpenAI model refuses minItems/maxItems.
    The schema cannot say everything the validation checks (alternating roles, the system turn first only), so
    the validation still checks every example afterwards.
    """
    schema = MODELS[fmt].model_json_schema(by_alias=True)
    example = _strictify(_inline(schema, schema.get("$defs", {})))
    key = TURNS_KEY.get(fmt)
    if turns is not None and key is not None:
        low, high = turns
        example["properties"][key] |= {"minItems": low, "maxItems": high + 1}
    listed: dict[str, Any] = {"type": "array", "items": example}
    if examples is not None:
        listed |= {"minItems": 1, "maxItems": examples}
    return {
        "type": "object",
        "properties": {"examples": listed},
        "required": ["examples"],
        "additionalProperties": False,
    }


def response_format(fmt: str, mode: str = "json_schema", examples: int | None = None,
                    turns: tuple[int, int] | None = None) -> dict[str, Any]:
    """The `response_format` request parameter for structured output (json_schema or json_object); `examples` and
    `turns` bound a json_schema's lists (see `response_schema`)."""
    if mode == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": f"{fmt}_examples", "strict": True, "schema": response_schema(fmt, examples, turns)},
    }


JUDGMENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"scores": {"type": "array", "items": {
        "type": "object",
        "properties": {"index": {"type": "integer"}, "score": {"type": "integer"}, "reason": {"type": "string"}},
        "required": ["index", "score", "reason"],
        "additionalProperties": False,
    }}},
    "required": ["scores"],
    "additionalProperties": False,
}
"""What a judge stage's answer holds: {"scores": [{"index", "score", "reason"}, ...]}, one score per example shown
(`index` is its place in the list, from 0). Strict, as OpenAI's structured output demands."""


def judgments_format(mode: str = "json_schema") -> dict[str, Any]:
    """The `response_format` of a judge stage's requests (json_schema or json_object)."""
    if mode == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "judgments", "strict": True, "schema": JUDGMENTS_SCHEMA}}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]), defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


# Dropped from the pydantic schema: minLength/maxLength are outside OpenAI's strict subset, and the list bounds
# come from the job instead (see `response_schema`).
_DROP = {"title", "default", "minLength", "maxLength", "minItems", "maxItems"}


def _strictify(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strictify(v) for k, v in node.items() if k not in _DROP}
        if out.get("type") == "object":
            out["additionalProperties"] = False
            out["required"] = list(out.get("properties", {}))
        if "const" in out and "enum" not in out:
            out["enum"] = [out.pop("const")]
        return out
    if isinstance(node, list):
        return [_strictify(v) for v in node]
    return node
