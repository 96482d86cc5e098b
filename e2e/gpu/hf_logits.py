"""End-to-end check of the GPU forward pass against HF transformers on the same dummy weights.

fused-gpu-bench --hf-dir DIR wrote DIR/config.json + model.safetensors (f32 dummy weights),
DIR/prompt.json and DIR/gpu_logits.f32 (the GPU's logits for every prompt position, computed with
matrices rounded to bf16 and bf16 activations). Here transformers runs the same prompt on the same
bf16-rounded matrices twice: in float32 (the reference) and in bfloat16 (the yardstick: what bf16
inference costs in transformers itself). PASS: the GPU's relative L2 error against the reference
is finite and at most 1e-2 or, if larger, at most 1.2x transformers' own bf16 error.
"""
import json, sys
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from safetensors.torch import load_file

d = sys.argv[1]
cfg = LlamaConfig(**json.load(open(f"{d}/config.json")))
model = LlamaForCausalLM(cfg).float().eval()
state = load_file(f"{d}/model.safetensors")
for name, t in state.items():
    if "norm" not in name:  # the GPU keeps norm weights f32, everything else bf16
        state[name] = t.to(torch.bfloat16).to(torch.float32)
missing, unexpected = model.load_state_dict(state, strict=False)
missing = [m for m in missing if "rotary" not in m]
if missing or unexpected:
    print("weights do not match:", missing, unexpected); sys.exit(1)
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
print(f"vs transformers f32 ({len(prompt)} positions): GPU rel_l2 {err:.3e} (argmax agreement "
      f"{agree:.3f}); transformers bf16 rel_l2 {err16:.3e} (agreement {agree16:.3f}) -> "
      f"{'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
