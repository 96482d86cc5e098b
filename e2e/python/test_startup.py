"""Start-up like vLLM's, on the real binary: the port is bound before anything is loaded (`/health`
200 and `/ready` 503 with the step while loading), the load logs its progress, `--device cuda`
without a usable GPU and a Hub name that is not a path fail with what to do, and a port in use
fails at once, before any weight is read."""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from conftest import BINARY, MODEL_NAME, Daemon, free_port

TOKENIZERS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusedmodel" / "tokenizers"
MISTRAL_TOKENIZER = TOKENIZERS / "mistral-7b-v0.1" / "tokenizer.json"


def run_to_exit(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def test_the_port_answers_before_the_model_is_loaded(tmp_path):
    """The tokenizer the dummy weights need is a FIFO the test holds shut: the daemon must have
    bound its port and must answer the probes while it waits on it, deterministically."""
    assert MISTRAL_TOKENIZER.is_file(), f"{MISTRAL_TOKENIZER} missing: run scripts/fetch-tokenizers.sh"
    fifo = tmp_path / "tokenizer.json"
    os.mkfifo(fifo)
    # A tiny dummy llama with the tokenizer's 32,000 ids (so every sampled id decodes).
    exported, _ = run_to_exit("export-dummy", "--shape", "tiny-llama", "--out", str(tmp_path / "tiny"))
    assert exported.returncode == 0, exported.stderr
    config_path = tmp_path / "tiny" / "config.json"
    config = json.loads(config_path.read_text())
    config["vocab_size"] = 32000
    config_path.write_text(json.dumps(config))
    port = free_port()
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        [str(BINARY), "serve", "--port", str(port), "--load-format", "dummy", "--model", str(config_path),
         "--tokenizer", str(fifo), "--served-model-name", MODEL_NAME],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        health = None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert health is not None and health.status_code == 200, log.read_text()
        ready = httpx.get(f"{base}/ready", timeout=2)
        assert ready.status_code == 503 and ready.headers.get("retry-after")
        assert ready.json()["status"] == "loading" and "reading the tokenizer" in ready.json()["reason"]
        api = httpx.get(f"{base}/v1/models", timeout=2)
        assert api.status_code == 503 and "starting" in api.json()["error"]["message"]
        assert httpx.get(f"{base}/version", timeout=2).status_code == 200
        assert "model loaded" not in log.read_text()
        # Let the load go on: the daemon turns ready and serves.
        data = MISTRAL_TOKENIZER.read_bytes()

        def write():
            with open(fifo, "wb") as pipe:  # opens once the daemon reads, as it does now
                pipe.write(data)

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=60)
        assert not writer.is_alive(), "the daemon stopped reading its tokenizer"
        deadline = time.time() + 120
        while time.time() < deadline and httpx.get(f"{base}/ready", timeout=2).status_code != 200:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert httpx.get(f"{base}/ready", timeout=2).status_code == 200
        models = httpx.get(f"{base}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == MODEL_NAME
        r = httpx.post(f"{base}/v1/completions", timeout=60,
                       json={"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_start_up_logs_its_steps_in_order_with_the_load_rate():
    d = Daemon(log_name="startup-steps")
    try:
        text = d.log_path.read_text()
    finally:
        assert d.stop() == 0
    steps = [
        "listening: /health answers now",
        "running on the CPU",
        "reading weights",
        "weights read:",
        "model loaded",
        "KV region reserved",
        "serving the OpenAI API; ready",
    ]
    positions = [text.find(step) for step in steps]
    assert all(p >= 0 for p in positions), dict(zip(steps, positions))
    assert positions == sorted(positions), f"out of order: {dict(zip(steps, positions))}"
    line = next(l for l in text.splitlines() if "weights read:" in l)
    assert " MB in " in line and "MB/s" in line and "mb_per_s=" in line, line


def test_device_cuda_without_a_gpu_fails_with_the_reason_and_auto_falls_back():
    port = free_port()
    proc, _ = run_to_exit("serve", "--port", str(port), "--device", "cuda")
    assert proc.returncode != 0
    assert "--device cuda: no usable GPU" in proc.stderr, proc.stderr
    assert "--device cpu" in proc.stderr and "--device auto" in proc.stderr
    assert "reading weights" not in proc.stderr, "nothing is loaded for a device that is not there"
    d = Daemon("--device", "auto", log_name="device-auto")
    try:
        text = d.log_path.read_text()
        assert "--device auto: no usable GPU; running on the CPU" in text, text
        r = httpx.post(f"{d.base}/v1/completions", timeout=60,
                       json={"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200
    finally:
        assert d.stop() == 0


def test_a_hub_name_that_is_not_a_path_says_how_to_fetch_it():
    port = free_port()
    proc, _ = run_to_exit("serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--port", str(port))
    assert proc.returncode != 0
    assert "fused-daemon fetch --uri hf://HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stderr, proc.stderr
    assert "listening" not in proc.stderr, "checked before the port is bound"


def test_a_port_in_use_fails_at_once_before_any_weight_is_read():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc, seconds = run_to_exit("serve", "--port", str(port))
    print(f"port-in-use error after {seconds * 1000:.0f} ms")
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in proc.stderr, proc.stderr
    assert "--port" in proc.stderr
    assert "reading weights" not in proc.stderr and "model loaded" not in proc.stderr
    # Well under a second when the machine is idle (the print above); bounded loosely here so a
    # busy CI machine cannot fail it, the ordering check above being the real guarantee.
    assert seconds < 5, seconds
