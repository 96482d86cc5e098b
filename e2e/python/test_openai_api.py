"""The OpenAI-compatible API exercised with the official `openai` client against the real daemon
serving SmolLM2-135M-Instruct on CPU."""

import httpx
import openai
import pytest

from conftest import MODEL_NAME, Daemon


def test_chat_answers_the_capital_of_france(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=30,
    )
    text = r.choices[0].message.content
    print("chat answer:", repr(text))
    assert "Paris" in text
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")


def test_completion_is_deterministic_when_greedy(client):
    kwargs = dict(model=MODEL_NAME, prompt="The three primary colours are", max_tokens=12, temperature=0)
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text.strip()
    assert a.usage.completion_tokens == 12 and a.choices[0].finish_reason == "length"


def test_streaming_with_usage_equals_the_non_streamed_text(client):
    kwargs = dict(model=MODEL_NAME, prompt="Once upon a time", max_tokens=20, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    assert chunks[-2].choices[0].finish_reason == "length"


def test_chat_streaming_roles_and_done(daemon):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{daemon.base}/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"role":"assistant"' in lines[0]


def test_stop_string_cuts_the_text_before_it(client):
    kwargs = dict(model=MODEL_NAME, prompt="Count: 1, 2, 3, 4, 5, 6, 7, 8", max_tokens=30, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    assert len(full) > 10, full
    stop = full[6:9]
    r = client.completions.create(stop=[stop], **kwargs)
    print(f"full={full!r} stop={stop!r} cut={r.choices[0].text!r}")
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_n_two_choices_with_seed(client):
    r = client.completions.create(model=MODEL_NAME, prompt="My favourite food is", max_tokens=8, n=2, seed=5, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]
    assert 2 <= r.usage.completion_tokens <= 16
    assert r.choices[0].text != r.choices[1].text, "choices of one request use different seeds"
    again = client.completions.create(model=MODEL_NAME, prompt="My favourite food is", max_tokens=8, n=2, seed=5, temperature=1.0)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]


def test_logit_bias_bans_and_forces_tokens(daemon, client):
    kwargs = dict(model=MODEL_NAME, prompt="The three primary colours are", max_tokens=1, temperature=0)
    first = client.completions.create(**kwargs).choices[0].text
    first_id = httpx.post(f"{daemon.base}/tokenize", json={"prompt": first, "add_special_tokens": False}).json()["tokens"]
    assert len(first_id) == 1, (first, first_id)
    banned = client.completions.create(logit_bias={str(first_id[0]): -100}, **kwargs).choices[0].text
    print(f"greedy first token {first!r} (id {first_id[0]}); banned -> {banned!r}")
    assert banned != first
    forced_id = httpx.post(f"{daemon.base}/tokenize", json={"prompt": " purple", "add_special_tokens": False}).json()["tokens"][0]
    forced = client.completions.create(logit_bias={str(forced_id): 100}, **{**kwargs, "max_tokens": 3})
    assert forced.choices[0].text == httpx.post(
        f"{daemon.base}/detokenize", json={"tokens": [forced_id] * 3}
    ).json()["prompt"]


def test_logprobs_completion_and_chat(client):
    r = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=4, logprobs=3, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.token_logprobs) == 4
    assert all(len(top) == 3 for top in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    # Greedy: the chosen token is the most likely alternative.
    for tok, lp_tok, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert max(top.values()) == pytest.approx(lp_tok, abs=1e-4)
    c = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True, top_logprobs=2, temperature=0
    )
    content = c.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)


def test_models_tokenize_detokenize_version(daemon, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    tok = httpx.post(f"{daemon.base}/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    detok = httpx.post(f"{daemon.base}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert detok["prompt"] == "Hello world"
    assert httpx.get(f"{daemon.base}/version").json()["version"]
    assert httpx.get(f"{daemon.base}/health").status_code == 200


BAD_REQUESTS = [
    ("temperature -1", "completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("max_tokens 0", "completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("top_p 2", "completions", {"prompt": "x", "top_p": 2}, 400, "top_p"),
    ("n 0", "completions", {"prompt": "x", "n": 0}, 400, "n"),
    ("empty messages", "chat", {"messages": []}, 400, "messages"),
    ("logit_bias 101", "completions", {"prompt": "x", "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("logit_bias key", "chat", {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    ("unknown model", "completions", {"prompt": "x", "model": "no-such-model"}, 404, "model"),
]


@pytest.mark.parametrize("name,endpoint,body,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_parameters_get_openai_errors(client, name, endpoint, body, status, param):
    body = {"model": MODEL_NAME, **body}
    call = client.chat.completions.create if endpoint == "chat" else client.completions.create
    with pytest.raises(openai.APIStatusError) as err:
        call(**body)
    e = err.value
    print(f"{name}: HTTP {e.status_code} {e.body}")
    assert e.status_code == status
    assert e.body["param"] == param and e.body["message"]


def test_malformed_json_and_context_overflow(daemon, client):
    r = httpx.post(f"{daemon.base}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"
    print("context overflow:", err.value.body)


def test_api_key_is_required_when_set():
    d = Daemon("--api-key", "sekret", log_name="apikey")
    try:
        from openai import OpenAI

        bad = OpenAI(base_url=f"{d.base}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
        assert err.value.status_code == 401
        good = OpenAI(base_url=f"{d.base}/v1", api_key="sekret", max_retries=0)
        assert good.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1).usage.completion_tokens == 1
        assert httpx.get(f"{d.base}/health").status_code == 200, "health stays open"
    finally:
        assert d.stop() == 0
