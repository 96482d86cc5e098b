"""Peers for the offline workload (c), on the same GPU in the same run: HF transformers on a
random-weight Llama-2-7B (bf16) — continuous batching (`generate_batch`, with the paged|sdpa
attention that gave the better numbers) and static-cache `generate` in fixed batches.
Usage: hf_peers.py REQUESTS PROMPT OUTPUT. Prints one `PEER name: X output tok/s` line each."""
import sys, time, traceback
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

n, plen, olen = (int(a) for a in sys.argv[1:4])
t0 = time.time()
def log(*a): print(f"[{time.time() - t0:6.1f}s]", *a, flush=True)
cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                  max_position_embeddings=4096)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model.eval()
g = torch.Generator().manual_seed(0)
reqs = [torch.randint(100, 30000, (plen,), generator=g).tolist() for _ in range(n)]

def static(batch):
    model.set_attn_implementation("sdpa")
    gc = GenerationConfig(max_new_tokens=olen, min_new_tokens=olen, do_sample=False, pad_token_id=0,
                          eos_token_id=None, cache_implementation="static")
    ids = torch.tensor(reqs[:batch], device="cuda")
    model.generate(ids, generation_config=gc)  # warm-up and compile
    torch.cuda.synchronize(); start = time.time(); done = 0
    for i in range(0, n, batch):
        ids = torch.tensor(reqs[i:i + batch], device="cuda")
        out = model.generate(ids, generation_config=gc)
        done += (out.shape[1] - plen) * out.shape[0]
    torch.cuda.synchronize()
    return done / (time.time() - start)

def continuous():
    model.set_attn_implementation("paged|sdpa")
    gc = GenerationConfig(max_new_tokens=olen, do_sample=False, eos_token_id=-1, pad_token_id=0)
    model.generate_batch(inputs=reqs[:16], generation_config=gc)
    torch.cuda.synchronize(); start = time.time()
    res = model.generate_batch(inputs=reqs, generation_config=gc)
    torch.cuda.synchronize()
    return sum(len(r.generated_tokens) for r in res.values()) / (time.time() - start)

for name, fn in [("transformers continuous batching (generate_batch, paged|sdpa)", continuous),
                 ("transformers static-cache generate, batch 64", lambda: static(64))]:
    try:
        log(f"PEER {name}: {fn():.1f} output tok/s")
    except Exception as ex:
        log(f"PEER {name}: failed: {repr(ex)[:300]}"); traceback.print_exc(limit=2)
