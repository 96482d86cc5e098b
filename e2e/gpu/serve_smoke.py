"""The daemon on the GPU serves the same HTTP API: start `fused-daemon serve --device cuda` on
loopback with dummy weights, wait for /ready, send a completion (JSON and streaming) and a bad
request, check the answers and the architecture in /metrics (`fused_model_info`), and time one
256-token greedy completion (single-stream decode over HTTP).
Usage: serve_smoke.py DAEMON_BINARY TOKENIZER [MODEL ARCH]   (MODEL: a preset or a config.json;
default llama-2-7b, llama)."""
import json, subprocess, sys, time, urllib.request, urllib.error

daemon, tokenizer = sys.argv[1], sys.argv[2]
model_arg, arch = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else ("llama-2-7b", "llama")
port = 18431
proc = subprocess.Popen([daemon, "serve", "--device", "cuda", "--load-format", "dummy",
                         "--model", model_arg, "--tokenizer", tokenizer, "--port", str(port),
                         "--max-seqs", "32", "--max-context", "2048", "--kv-memory-mib", "16384"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
base = f"http://127.0.0.1:{port}"
def call(path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
ok = True
try:
    for _ in range(240):
        try:
            # /health answers as soon as the port is bound; /ready once the model is loaded.
            if call("/ready", timeout=2)[0] == 200: break
        except Exception: pass
        if proc.poll() is not None: break
        time.sleep(0.5)
    else:
        raise SystemExit("daemon did not become ready")
    if proc.poll() is not None:
        raise SystemExit("daemon exited: " + proc.stdout.read()[-3000:])
    model = json.loads(call("/v1/models")[1])["data"][0]["id"]
    t = time.time()
    status, body = call("/v1/completions", {"model": model, "prompt": "Hello GPU", "max_tokens": 32,
                                             "temperature": 0, "ignore_eos": True})
    dt = time.time() - t
    usage = json.loads(body).get("usage", {}) if status == 200 else {}
    print(f"completion: HTTP {status}, {usage.get('completion_tokens')} tokens in {dt*1e3:.0f} ms")
    ok &= status == 200 and usage.get("completion_tokens") == 32
    # (The dummy model's tokenizer has no chat template, so chat is answered 400: stream a
    # completion instead.)
    status, body = call("/v1/completions", {"model": model, "stream": True, "max_tokens": 8,
                                             "prompt": "hi", "ignore_eos": True})
    chunks = body.count("data: {")
    print(f"completion stream: HTTP {status}, {chunks} chunks, ends with [DONE]: "
          f"{body.rstrip().endswith('data: [DONE]')}")
    ok &= status == 200 and body.rstrip().endswith("data: [DONE]")
    status, body = call("/v1/completions", {"model": model, "prompt": "x", "max_tokens": -3})
    print(f"bad request: HTTP {status} {body[:120]}")
    ok &= status == 400
    status, body = call("/metrics")
    print("metrics:", [l for l in body.splitlines() if l.startswith("vllm:generation_tokens_total")][:1])
    info = [l for l in body.splitlines() if l.startswith("fused_model_info{")]
    print("model info:", info[:1])
    ok &= status == 200 and any(f'architecture="{arch}"' in l for l in info)
    t = time.time()
    status, body = call("/v1/completions", {"model": model, "prompt": "Hello GPU", "max_tokens": 256,
                                             "temperature": 0, "ignore_eos": True}, timeout=120)
    dt = time.time() - t
    tokens = json.loads(body).get("usage", {}).get("completion_tokens", 0) if status == 200 else 0
    print(f"single stream: {tokens} tokens in {dt*1e3:.0f} ms = {tokens / dt:.1f} tok/s (HTTP, prefill included)")
    ok &= tokens == 256
finally:
    proc.terminate()
    try: out = proc.communicate(timeout=30)[0]
    except Exception: proc.kill(); out = proc.communicate()[0]
    print("daemon log tail:\n" + "\n".join(out.splitlines()[-8:]))
print("serve smoke:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
