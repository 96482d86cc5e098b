"""Structured outputs (llguidance) through the official `openai` client against the real daemon
serving SmolLM2-135M-Instruct: `beta.chat.completions.parse` with a Pydantic model, JSON mode,
vLLM's guided_* fields, and the 400s for what cannot be enforced."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import MODEL_NAME

CITIES = [
    "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Athens", "Budapest", "Brussels", "Amsterdam", "Copenhagen", "Bern",
    "Tokyo", "Seoul", "Beijing", "Delhi", "Bangkok", "Hanoi", "Jakarta", "Manila", "Cairo",
    "Nairobi", "Lagos", "Accra", "Dakar", "Rabat", "Tunis", "Ottawa", "Toronto", "Chicago",
    "Boston", "Denver", "Lima", "Quito", "Bogota", "Santiago", "Caracas", "Havana", "Sydney",
    "Melbourne", "Auckland", "Perth", "Munich", "Milan",
]


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0, le=100_000_000)
    is_capital: bool


def test_parse_returns_a_valid_pydantic_object_for_every_request(client):
    assert len(CITIES) == 50

    def ask(i: int):
        return client.beta.chat.completions.parse(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": f"Describe the city of {CITIES[i]} as JSON."}],
            response_format=City,
            # Enough for the longest object the schema allows: every output completes.
            max_tokens=200,
            temperature=0.7,
            seed=i,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(ask, range(len(CITIES))))
    parsed = [r.choices[0].message.parsed for r in replies]
    for r, city in zip(replies[:3], parsed[:3]):
        print("parsed:", r.choices[0].message.content, "->", city)
    assert all(isinstance(c, City) for c in parsed), [r.choices[0].message.content for r in replies]
    assert all(r.choices[0].finish_reason == "stop" for r in replies)
    # The objects come from the model, not a template: they differ.
    assert len({c.name for c in parsed}) > 10


def test_json_object_mode_returns_a_json_object(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    text = r.choices[0].message.content
    print("json_object:", text)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


def test_vllm_guided_fields_constrain_the_output(client):
    choice = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=10,
        extra_body={"guided_choice": ["yes", "no", "it depends"]},
    )
    assert choice.choices[0].message.content in ("yes", "no", "it depends")
    regex = client.completions.create(
        model=MODEL_NAME,
        prompt="The ICD-10 code for pneumonia is",
        max_tokens=10,
        extra_body={"guided_regex": r" [A-Z][0-9]{2}\.[0-9]"},
    )
    assert re.fullmatch(r" [A-Z][0-9]{2}\.[0-9]", regex.choices[0].text), regex.choices[0].text
    newer = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Pick a colour."}],
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["red", "green"]}},
    )
    assert newer.choices[0].message.content in ("red", "green")
    grammar = client.completions.create(
        model=MODEL_NAME,
        prompt="Answer: ",
        max_tokens=10,
        extra_body={"guided_grammar": 'start: "ICD " CODE\nCODE: /[A-Z][0-9]{2}/'},
    )
    assert re.fullmatch(r"ICD [A-Z][0-9]{2}", grammar.choices[0].text), grammar.choices[0].text


def test_a_streamed_schema_output_is_the_whole_object(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 30}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
            max_tokens=60,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert set(json.loads(text)) == {"answer"}, text


@pytest.mark.parametrize(
    "body, param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_json": {"type": "object"}, "guided_choice": ["a"]}, "guided_choice"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_the_field(daemon, body, param):
    full = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **body}
    r = httpx.post(f"{daemon.base}/v1/chat/completions", json=full, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_unknown_fields_are_accepted_as_vllm_does(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body={"my_trace_tag": "x"}
    )
    assert r.choices[0].message.content is not None


def test_echo_prepends_the_prompt(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=5, temperature=0, echo=True)
    assert r.choices[0].text.startswith("The capital of France is")
    plain = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text == "The capital of France is" + plain.choices[0].text
    streamed = client.completions.create(
        model=MODEL_NAME, prompt="The capital of France is", max_tokens=5, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, echo=True, logprobs=1)
    assert err.value.body["param"] == "echo"
