"""The real SmolLM2-135M-Instruct GGUF served on the GPU answers as on the CPU (issue 20's
real-model check). `record` serves it on this machine's CPU and writes each prompt's greedy
answer (text and tokens) to a JSON file; `check` serves it with `--device cuda` (bf16, then
`--quantization fp8`) on the GPU machine and compares, answer by answer: tokens in common before
the first difference. The README's prompt must get the CPU's answer in bf16 (exit 1 otherwise);
the other answers, and FP8's, are reported (a bf16 pass is not the CPU's f32 arithmetic, so a
near-tie may go the other way late in a long answer).

Usage:
  real_model.py record DAEMON GGUF ANSWERS.json     (here, CPU)
  real_model.py check  DAEMON GGUF ANSWERS.json     (GPU machine)
"""
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROMPTS = [
    "What is the capital of France?",  # the README's
    "Name three primary colors.",
    "What does the ICD-10-CM code E11.9 describe?",
    "Write one sentence about the ocean.",
    "What is 12 times 12?",
    "Explain what a fever is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "List two symptoms of the common cold.",
]
MAX_TOKENS = 48
PORT = 18441


def call(path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def serve(daemon, gguf, extra):
    """Starts the daemon, waits for /ready; returns the process."""
    proc = subprocess.Popen([daemon, "serve", gguf, "--port", str(PORT), "--max-seqs", "8",
                             "--max-context", "1024", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(480):
        if proc.poll() is not None:
            raise SystemExit(f"daemon {extra} exited: {proc.stdout.read()[-3000:]}")
        try:
            if call("/ready", timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"daemon {extra} did not become ready")


def answers(daemon, gguf, extra):
    """Each prompt's greedy answer: its text and its tokens (as the logprobs list them)."""
    proc = serve(daemon, gguf, extra)
    try:
        out = []
        for prompt in PROMPTS:
            status, body = call("/v1/chat/completions", {
                "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
                "temperature": 0, "logprobs": True})
            if status != 200:
                raise SystemExit(f"{extra}: {prompt!r} -> {status} {body[:500]}")
            choice = json.loads(body)["choices"][0]
            tokens = [t["token"] for t in choice["logprobs"]["content"]]
            out.append({"prompt": prompt, "text": choice["message"]["content"], "tokens": tokens})
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(label, got, want):
    """Prints one line per prompt and a summary; returns (exact answers, tokens in common, tokens)."""
    exact = same = total = 0
    for g, w in zip(got, want):
        n = common_prefix(g["tokens"], w["tokens"])
        exact += g["tokens"] == w["tokens"]
        same += n
        total += len(w["tokens"])
        print(f"{label}: {n:2d}/{len(w['tokens'])} tokens as on the CPU: {w['prompt']!r} -> {g['text']!r}")
    print(f"REAL-MODEL {label}: {exact}/{len(want)} answers identical to the CPU's; "
          f"{same}/{total} tokens before the first difference")
    return exact, same, total


def main():
    mode, daemon, gguf, path = sys.argv[1:5]
    if mode == "record":
        recorded = answers(daemon, gguf, ["--device", "cpu"])
        with open(path, "w") as f:
            json.dump({"model": gguf.rsplit("/", 1)[-1], "max_tokens": MAX_TOKENS,
                       "answers": recorded}, f, indent=1, ensure_ascii=False)
        print(f"recorded {len(recorded)} CPU answers in {path}")
        return
    want = json.load(open(path))["answers"]
    bf16 = answers(daemon, gguf, ["--device", "cuda"])
    compare("bf16", bf16, want)
    fp8 = answers(daemon, gguf, ["--device", "cuda", "--quantization", "fp8"])
    compare("fp8", fp8, want)
    readme = bf16[0]["tokens"] == want[0]["tokens"]
    print(f"REAL-MODEL the README's prompt in bf16: {'the CPU answer' if readme else 'DIFFERS'}")
    sys.exit(0 if readme else 1)


if __name__ == "__main__":
    main()
