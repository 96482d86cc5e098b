"""vLLM's command line on the real binary: a typical `vllm serve` line, written out as a vLLM
user types it (only the program name differs), starts the daemon and serves with every flag
taking effect; vLLM flags this server does not support are refused with the reason."""

import subprocess

import httpx
from openai import OpenAI

from conftest import BINARY, Daemon, free_port
from test_bench import GGUF

TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}assistant:{% endif %}"


def test_a_vllm_serve_command_line_starts_the_daemon_and_serves(tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    port = free_port()
    # vllm serve MODEL --served-model-name ... as in vLLM's docs and most deployment manifests.
    command_line = (
        f"serve {GGUF} --served-model-name smol-chat --host 127.0.0.1 --port {port} "
        "--max-model-len 1024 --max-num-seqs 4 --max-num-batched-tokens 256 "
        "--gpu-memory-utilization 0.85 --dtype auto --seed 0 --api-key sekret "
        f"--chat-template {template} --disable-log-requests --tensor-parallel-size 1 "
        "--enable-chunked-prefill --trust-remote-code --no-enable-prefix-caching "
        "--disable-log-stats --enforce-eager"
    )
    d = Daemon(argv=command_line.split(), port=port, log_name="vllm-cli")
    try:
        client = OpenAI(base_url=f"{d.base}/v1", api_key="sekret", max_retries=0, timeout=120)
        models = client.models.list().data
        assert [m.id for m in models] == ["smol-chat"]
        assert models[0].model_extra["max_model_len"] == 1024, "--max-model-len"
        chat = client.chat.completions.create(
            model="smol-chat", messages=[{"role": "user", "content": "Say hi."}], max_tokens=5,
        )
        assert chat.choices[0].message.content is not None and chat.usage.completion_tokens <= 5
        # --chat-template: the prompt is the template's rendering, token for token.
        auth = {"Authorization": "Bearer sekret"}
        rendered = httpx.post(f"{d.base}/tokenize", headers=auth, json={
            "model": "smol-chat", "messages": [{"role": "user", "content": "Say hi."}]}).json()
        plain = httpx.post(f"{d.base}/tokenize", headers=auth, json={
            "model": "smol-chat", "prompt": "user: Say hi.\nassistant:", "add_special_tokens": False}).json()
        assert rendered["tokens"] == plain["tokens"]
        assert chat.usage.prompt_tokens == plain["count"]
        # --api-key guards the API.
        assert httpx.get(f"{d.base}/v1/models").status_code == 401
        # --max-num-seqs / --max-num-batched-tokens reached the scheduler.
        metrics = httpx.get(f"{d.base}/metrics").text
        assert 'fused_sched_token_budget{engine="0",model_name="smol-chat"} 256' in metrics
        log = d.log_path.read_text()
        assert "request finished" not in log, "--disable-log-requests"
        # An over-long prompt is refused against --max-model-len (1024), not the model's 8192.
        r = httpx.post(f"{d.base}/v1/completions", headers=auth, json={
            "model": "smol-chat", "prompt": "word " * 1100, "max_tokens": 4})
        assert r.status_code == 400, r.text
    finally:
        assert d.stop() == 0


def refused(*flags: str) -> str:
    proc = subprocess.run([str(BINARY), "serve", str(GGUF), "--port", str(free_port()), *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (flags, proc.returncode, proc.stderr)
    assert "listening" not in proc.stderr, "refused before anything starts"
    return proc.stderr


def test_vllm_flags_this_server_does_not_support_are_refused_with_the_reason():
    # --quantization takes the methods this server runs (clap lists them); fp8 runs on the GPU.
    err = refused("--quantization", "awq")
    assert "invalid value 'awq'" in err and "fp8" in err, err
    assert "invalid value 'gptq'" in refused("-q", "gptq")
    proc = subprocess.run([str(BINARY), "serve", str(GGUF), "--port", str(free_port()), "--device", "cpu",
                           "--quantization", "fp8"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--quantization fp8 runs on the GPU" in proc.stderr, proc.stderr
    err = refused("--kv-cache-dtype", "fp8")
    assert "`--kv-cache-dtype` is a vLLM flag that fused-daemon does not support" in err
    assert "README.md" in err
    assert "Sarathi" in refused("--no-enable-chunked-prefill")
    assert "--kv-block-size" in refused("--block-size=16")
    # vLLM's `-tp 2` is read as --tensor-parallel-size, which takes 1 only.
    proc = subprocess.run([str(BINARY), "serve", str(GGUF), "--port", str(free_port()), "-tp", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "tensor parallelism is not implemented" in proc.stderr, proc.stderr
    # A flag neither server knows gets clap's own error.
    assert "unexpected argument" in refused("--no-such-flag")


def test_help_lists_the_enumerations_and_vllm_names():
    out = subprocess.run([str(BINARY), "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    values = {
        "--device": ["auto", "cpu", "cuda"],
        "--dtype": ["auto", "half", "float16", "bfloat16", "float", "float32"],
        "--kv-layout": ["interleaved", "perLayer"],
        "--scheduler": ["sarathi", "prefill-first", "decode-first"],
        "--load-format": ["auto", "dummy"],
    }
    for flag, names in values.items():
        section = out[out.index(f"  {flag} <"):]
        section = section[:section.index("[default:")]
        assert "Possible values:" in section, section
        for name in names:
            assert f"- {name}" in section, f"{flag} {name} not listed:\n{section}"
    for text in ["[alias: --max-model-len]", "[alias: --max-num-seqs]",
                 "[alias: --max-num-batched-tokens]", "[alias: --enforce-eager]",
                 "vLLM compatibility:", "[MODEL]"]:
        assert text in out, f"{text!r} not in --help"
