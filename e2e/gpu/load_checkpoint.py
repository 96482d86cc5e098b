"""Issue 20 (loading): a real-format Llama-2-7B bf16 checkpoint (random values, transformers'
`save_pretrained` shards) written on this machine, the disk read rate of its files, then
`fused-daemon serve --device cuda --model DIR` streaming it to the GPU: seconds to ready, load
GB/s, peak host RSS (VmHWM), and one greedy completion over HTTP.
Usage: load_checkpoint.py DAEMON_BINARY TOKENIZER_DIR [CHECKPOINT_DIR]
       load_checkpoint.py write CHECKPOINT_DIR   (only writes the checkpoint, if it is not there)"""
import glob, json, os, subprocess, sys, time, urllib.request

if sys.argv[1] == "write":
    daemon, tokenizer, ckpt = None, None, sys.argv[2]
else:
    daemon, tokenizer = sys.argv[1], sys.argv[2]
    ckpt = sys.argv[3] if len(sys.argv) > 3 else "/tmp/llama2-7b-bf16"


def write_checkpoint():
    if glob.glob(f"{ckpt}/*.safetensors"):
        return 0.0
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.time()
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(ckpt, max_shard_size="5GB", safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return time.time() - started


def read_rate():
    files = sorted(glob.glob(f"{ckpt}/*.safetensors"))
    total = sum(os.path.getsize(f) for f in files)
    dropped = subprocess.run("sync && echo 3 > /proc/sys/vm/drop_caches", shell=True,
                             capture_output=True).returncode == 0
    started = time.time()
    for f in files:
        with open(f, "rb") as h:
            while h.read(64 << 20):
                pass
    seconds = time.time() - started
    return total, total / seconds / 1e9, dropped


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def call(base, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read().decode() or "{}")


write_s = write_checkpoint()
if daemon is None:
    print(f"checkpoint in {ckpt} (written in {write_s:.0f} s)")
    sys.exit(0)
total, disk_gbps, dropped = read_rate()
# Cold again for the load itself when the page cache can be dropped.
subprocess.run("sync && echo 3 > /proc/sys/vm/drop_caches", shell=True, capture_output=True)
port = 18433
log = open("/tmp/load-daemon.log", "w")
started = time.time()
proc = subprocess.Popen([daemon, "serve", "--device", "cuda", "--model", ckpt, "--tokenizer", tokenizer,
                         "--port", str(port), "--max-seqs", "8", "--max-context", "2048"],
                        stdout=log, stderr=subprocess.STDOUT)
base = f"http://127.0.0.1:{port}"
ready_s, status = None, "not ready"
try:
    while time.time() - started < 300:
        if proc.poll() is not None:
            status = f"exited {proc.returncode}"
            break
        try:
            if call(base, "/ready", timeout=2)[0] == 200:
                ready_s = time.time() - started
                break
        except Exception:
            pass
        time.sleep(0.2)
    hwm_ready = vm_hwm_kb(proc.pid) if proc.poll() is None else -1
    answer = None
    if ready_s is not None:
        code, body = call(base, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 16,
                                                    "temperature": 0, "ignore_eos": True})
        answer = (code, body.get("usage", {}).get("completion_tokens"))
        status = "ready"
finally:
    proc.terminate()
    proc.wait(timeout=60)
    log.close()
streamed = [l for l in open("/tmp/load-daemon.log") if "weights streamed" in l]
print(open("/tmp/load-daemon.log").read()[-2500:])
print("==== load results")
print(f"checkpoint        {total / 1e9:.2f} GB in {len(glob.glob(ckpt + '/*.safetensors'))} shards (written in {write_s:.0f} s)")
print(f"disk read         {disk_gbps:.2f} GB/s ({'page cache dropped' if dropped else 'page cache NOT droppable: warm read'})")
print(f"serve             {status}; ready after {ready_s} s; completion {answer}")
print(f"peak host RSS     {hwm_ready / 1e6:.2f} GB (VmHWM at ready)")
print(f"streamed line     {streamed[-1].strip() if streamed else 'missing'}")
ok = ready_s is not None and answer == (200, 16)
sys.exit(0 if ok else 1)
