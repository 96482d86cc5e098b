"""Tool calls through the official `openai` client against the real daemon serving
SmolLM2-135M-Instruct: an agent loop (call → tool result → final answer), streamed call deltas,
and the 400s of bad tool requests."""

import json

import httpx
import openai
import pytest

from conftest import MODEL_NAME

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]


def get_weather(city: str) -> str:
    return f"It is 18 degrees Celsius and sunny in {city}."


def get_time(city: str) -> str:
    return f"It is 14:05 in {city}."


IMPLEMENTATIONS = {"get_weather": get_weather, "get_time": get_time}


def test_agent_loop_call_result_answer(client):
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    calls_made = []
    answer = None
    for turn in range(4):
        r = client.chat.completions.create(
            model=MODEL_NAME,
            messages=messages,
            tools=TOOLS,
            # The agent insists on a call first, then asks for the answer.
            tool_choice="required" if turn == 0 else "none",
            max_tokens=80,
            temperature=0,
        )
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            messages.append(choice.message.model_dump(exclude_none=True))
            for call in choice.message.tool_calls:
                arguments = json.loads(call.function.arguments)
                result = IMPLEMENTATIONS[call.function.name](**arguments)
                calls_made.append((call.function.name, arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            continue
        answer = choice.message.content
        break
    print("calls:", calls_made, "answer:", repr(answer))
    assert calls_made and calls_made[0][0] in IMPLEMENTATIONS and calls_made[0][1]["city"]
    assert answer and answer.strip(), messages


def test_a_named_function_is_called_with_schema_valid_arguments(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0,
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_time" and call.id.startswith("chatcmpl-tool-")
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert r.choices[0].message.content is None


def test_streamed_tool_call_deltas_assemble_into_the_call(client):
    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=80,
            temperature=0,
            stream=True,
        )
        calls, finish = {}, None
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            for d in delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or d.id
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        print(tool_choice, "->", calls)
        assert finish == "tool_calls"
        assert calls[0]["id"] and calls[0]["name"] in IMPLEMENTATIONS
        assert "city" in json.loads(calls[0]["arguments"])


def test_tool_messages_render_and_none_answers_in_text(client):
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": get_weather("Rome")},
    ]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=30, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.mark.parametrize(
    "body, param",
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(daemon, body, param):
    full = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **body}
    r = httpx.post(f"{daemon.base}/v1/chat/completions", json=full, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
