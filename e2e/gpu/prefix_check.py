"""Prefix sharing on the GPU, one daemon at a time (e2e/gpu/prefix.sh drives it):

  prefix_check.py probe PORT OUT.json     greedy tokens and logprobs of prompts that share 0 %,
                                          50 %, 100 % of a cached base prompt and diverge at and
                                          inside a page boundary (token-id prompts, sent one by
                                          one, the base first), with the server's cached_tokens
  prefix_check.py compare ON.json OFF.json TOL [FLOOR.json]
                                          the same greedy tokens and logprobs with and without
                                          sharing, within TOL or, with FLOOR.json (the same probe
                                          without sharing under another token budget: other
                                          chunk boundaries), within twice the difference that
                                          re-chunking alone makes (bf16 GEMMs round differently
                                          for other row counts). A near tie, top-2 gap below twice
                                          the tolerance, may flip a token; the comparison of that
                                          prompt stops there. Exit status 1 on any difference
  prefix_check.py metrics PORT            the prefix-cache and KV series of /metrics, as JSON

Only the standard library: the GPU machine has no httpx.
"""
import json
import random
import sys
import urllib.request


def call(port, path, body=None, timeout=300):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def metrics(port):
    wanted = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "fused_kv_shared_pages",
              "fused_kv_pages_total", "fused_kv_pages_free", "fused_kv_page_bytes", "vllm:kv_cache_usage_perc",
              "fused_kv_map_stalls_total", "fused_kv_map_stall_seconds_total", "fused_kv_page_map_seconds_sum",
              "fused_kv_page_map_seconds_count")
    values, block = {}, None
    for line in call(port, "/metrics").splitlines():
        if line.startswith("vllm:cache_config_info{"):
            block = int(line.split('block_size="')[1].split('"')[0])
        name = line.split("{")[0].split(" ")[0]
        if name in wanted:
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    values["tokens_per_page"] = block
    return values


def prompts(tokens_per_page, vocab=31000):
    rng = random.Random(7)
    own = lambda n: [rng.randrange(100, vocab) for _ in range(n)]
    base = own(2300)
    at = (len(base) - 200) // tokens_per_page * tokens_per_page
    inside = at - max(tokens_per_page // 2, 1)
    return [("base", base), ("shares 0 %", own(300)), ("shares 50 %", base[:len(base) // 2] + own(150)),
            ("shares 100 %", base), (f"diverges at a page boundary ({at})", base[:at] + own(100)),
            (f"diverges inside a page ({inside})", base[:inside] + own(100))]


def probe(port, out):
    tokens_per_page = metrics(port)["tokens_per_page"]
    model = json.loads(call(port, "/v1/models"))["data"][0]["id"]
    results = []
    for name, ids in prompts(tokens_per_page):
        body = {"model": model, "prompt": ids, "max_tokens": 8, "temperature": 0, "logprobs": 2,
                "ignore_eos": True}
        r = json.loads(call(port, "/v1/completions", body))
        lp = r["choices"][0]["logprobs"]
        details = r["usage"].get("prompt_tokens_details") or {}
        results.append({"name": name, "tokens": lp["tokens"], "logprobs": lp["token_logprobs"],
                        "top": [sorted(t.values(), reverse=True) for t in lp["top_logprobs"]],
                        "prompt_tokens": r["usage"]["prompt_tokens"],
                        "cached_tokens": details.get("cached_tokens") or 0})
    json.dump({"tokens_per_page": tokens_per_page, "results": results}, open(out, "w"))
    for r in results:
        print(f"  {r['name']}: {r['prompt_tokens']} prompt tokens, {r['cached_tokens']} cached")


def differences(a_results, b_results):
    """The logprob differences of each prompt's tokens up to its first differing token, and the
    first differing token of each prompt that has one (name, index, tokens, top-2 gaps)."""
    diffs, flips = [], []
    for a, b in zip(a_results, b_results, strict=True):
        for i, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"])):
            diffs.append(abs(a["logprobs"][i] - b["logprobs"][i]))
            if ta != tb:
                gaps = [t[0] - t[1] if len(t) > 1 else 0.0 for t in (a["top"][i], b["top"][i])]
                flips.append((a["name"], i, ta, tb, gaps))
                break
    return diffs, flips


def compare(on_path, off_path, tol, floor_path=None):
    on, off = json.load(open(on_path)), json.load(open(off_path))
    floor_note = ""
    if floor_path:
        floor, _ = differences(off["results"], json.load(open(floor_path))["results"])
        floor_worst = max(floor, default=0.0)
        tol = max(tol, 2 * floor_worst)
        floor_note = f" = max(given, 2 x {floor_worst:.2e}, the worst difference re-chunking alone makes)"
    failures = []
    diffs, flips = differences(on["results"], off["results"])
    worst = max(diffs, default=0.0)
    for name, i, ta, tb, gaps in flips:
        if max(gaps) >= 2 * tol:
            failures.append(f"{name}: token {i} differs ({ta!r} vs {tb!r}) with top-2 gaps {gaps}")
    for b in off["results"]:
        if b["cached_tokens"]:
            failures.append(f"{b['name']}: {b['cached_tokens']} tokens cached without prefix caching")
    hits = [r["cached_tokens"] for r in on["results"]]
    if not any(hits[1:]):
        failures.append(f"prefix caching cached nothing: {hits}")
    print(f"  worst logprob difference {worst:.2e} (tolerance {tol:.2e}{floor_note}); cached tokens with sharing {hits}")
    if worst > tol:
        failures.append(f"logprobs differ by {worst:.3e} > {tol}")
    for f in failures:
        print("  FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    verb = sys.argv[1]
    if verb == "probe":
        probe(int(sys.argv[2]), sys.argv[3])
    elif verb == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], float(sys.argv[4]), *sys.argv[5:6]))
    elif verb == "metrics":
        print(json.dumps(metrics(int(sys.argv[2]))))
    else:
        sys.exit(f"unknown verb {verb}")
