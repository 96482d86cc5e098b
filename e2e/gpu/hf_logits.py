"""End-to-end check of the GPU forward pass against HF transformers on the same dummy weights.

fused-gpu-bench --hf-dir DIR wrote, for each shape (a Llama, a Qwen2 and a GPT-2 one), DIR/<shape>/ with
config.json + model.safetensors (f32 dummy weights), prompt.json and gpu_logits.f32 (the GPU's
logits for every prompt position, computed with matrices rounded to bf16 and bf16 activations).
Here transformers runs the same prompt on the same bf16-rounded matrices twice: in float32 (the
reference) and in bfloat16 (the yardstick: what bf16 inference costs in transformers itself).
PASS: the GPU's relative L2 error against the reference is finite and at most 1e-2 or, if
larger, at most 1.2x transformers' own bf16 error. Exit status 1 if any shape fails.
"""
import json, os, sys
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from safetensors.torch import load_file


def check(d):
    cfg = AutoConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    state = load_file(f"{d}/model.safetensors")
    # GPT-2 checkpoints name the base model's tensors without its prefix (`h.0...`, `wte.weight`).
    expected = model.state_dict().keys()
    prefix = model.base_model_prefix
    state = {(k if k in expected else f"{prefix}.{k}"): t for k, t in state.items()}
    for name, t in state.items():
        # The GPU keeps norm weights and biases f32, every matrix bf16.
        if "norm" not in name and ".ln_" not in name and not name.endswith("bias"):
            state[name] = t.to(torch.bfloat16).to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head is not in the checkpoint; rotary buffers and GPT-2's causal-mask buffers never are.
    missing = [m for m in missing if "rotary" not in m and not m.endswith((".attn.bias", ".attn.masked_bias"))
               and not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        print(f"{d}: weights do not match:", missing, unexpected)
        return False
    prompt = json.load(open(f"{d}/prompt.json"))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = model(ids).logits[0].double().numpy()
        model = model.to("cuda", torch.bfloat16)
        hf16 = model(ids.to("cuda")).logits[0].double().cpu().numpy()
    gpu = np.fromfile(f"{d}/gpu_logits.f32", dtype=np.float32).reshape(ref.shape).astype(np.float64)
    rel = lambda x: float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
    err, err16 = rel(gpu), rel(hf16)
    ok = bool(np.isfinite(gpu).all()) and err <= max(1e-2, 1.2 * err16)
    agree = float((gpu.argmax(-1) == ref.argmax(-1)).mean())
    agree16 = float((hf16.argmax(-1) == ref.argmax(-1)).mean())
    print(f"{os.path.basename(d)} ({cfg.model_type}) vs transformers f32 ({len(prompt)} positions): GPU rel_l2 "
          f"{err:.3e} (argmax agreement {agree:.3f}); transformers bf16 rel_l2 {err16:.3e} (agreement "
          f"{agree16:.3f}) -> {'PASS' if ok else 'FAIL'}")
    return ok


root = sys.argv[1]
shapes = sorted(os.path.join(root, d) for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "config.json")))
if not shapes:
    print(f"no exported shapes under {root}"); sys.exit(1)
results = [check(d) for d in shapes]
sys.exit(0 if all(results) else 1)
