"""Issue 16 item 15: with `--gpu-memory-utilization 1.0` the KV pool takes every free byte, so
the work buffers must already be sized for the largest batch at start-up. Starts the daemon on
dummy Llama-2-7B that way and sends a prompt that fills the token budget: it must answer 200
(before, the first long prefill failed to grow its buffers).
Usage: full_memory.py DAEMON_BINARY TOKENIZER_DIR"""
import json, subprocess, sys, time, urllib.request, urllib.error

daemon, tokenizer = sys.argv[1], sys.argv[2]
port = 18435
log = open("/tmp/full-memory.log", "w")
proc = subprocess.Popen([daemon, "serve", "--device", "cuda", "--load-format", "dummy", "--model", "llama-2-7b",
                         "--tokenizer", tokenizer, "--port", str(port), "--gpu-memory-utilization", "1.0",
                         "--max-seqs", "16", "--max-context", "4096", "--token-budget", "4096"],
                        stdout=log, stderr=subprocess.STDOUT)
base = f"http://127.0.0.1:{port}"
result = "not ready"
try:
    for _ in range(600):
        if proc.poll() is not None:
            result = f"exited {proc.returncode} at start"
            break
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            time.sleep(0.2)
    if proc.poll() is None:
        prompt = list(range(100, 100 + 3900))
        body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}).encode()
        req = urllib.request.Request(base + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                result = f"HTTP {r.status}, {json.loads(r.read())['usage']}"
        except urllib.error.HTTPError as e:
            result = f"HTTP {e.code}: {e.read().decode()[:300]}"
finally:
    proc.terminate()
    proc.wait(timeout=60)
    log.close()
print(open("/tmp/full-memory.log").read()[-1500:])
print(f"==== gpu-memory-utilization 1.0, 3900-token prompt: {result}")
sys.exit(0 if result.startswith("HTTP 200") else 1)
