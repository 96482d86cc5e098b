"""Our forward pass against HF transformers (PyTorch, CPU, float32) on the same weights: the real
SmolLM2 GGUF and dummy-weight GPT-2 / Llama / Qwen2 shapes saved as safetensors. Each case compares a
one-shot prefill, a chunked prefill followed by single-token decode steps, and a varlen batch
(one sequence decoding while another is prefilled) against the reference's logits.

Thresholds: max |logit difference| ≤ MAX_ABS (summation order differs between the two
implementations; weights are bit-identical f32 after dequantisation) and the same top-1 token at
every position."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from conftest import BINARY

MODEL_CACHE = Path.home() / ".cache" / "fusedmodel" / "models"
GGUF = MODEL_CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_ABS = 2e-3

# "The capital of France is" / "def fib(n):" style ids; any in-vocabulary ids are valid input.
PROMPT_A = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4649, 314]
PROMPT_B = [1, 216, 14402, 28, 2030, 17, 253]


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def ours(model_path, a, b, tmp_path):
    out = tmp_path / "ours.safetensors"
    subprocess.run(
        [str(BINARY), "logits", "--model", str(model_path), "--a", ",".join(map(str, a)), "--b", ",".join(map(str, b)), "--out", str(out)],
        check=True,
    )
    return load_file(str(out))


def compare(name, got, want):
    diff = float(np.abs(got - want).max())
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(f"{name:<28} max|Δlogit| = {diff:.2e}  top-1 agreement = {top1:.0%}  ({got.shape[0]} positions)")
    assert not np.isnan(got).any()
    assert diff <= MAX_ABS, f"{name}: max abs logit difference {diff} > {MAX_ABS}"
    assert top1 == 1.0, f"{name}: top-1 disagrees at some position"


def check_all(case, model_path, ref_model, vocab, tmp_path):
    a = [t % vocab for t in PROMPT_A]
    b = [t % vocab for t in PROMPT_B]
    mine = ours(model_path, a, b, tmp_path)
    ref_a, ref_b = reference_logits(ref_model, a), reference_logits(ref_model, b)
    compare(f"{case} prefill A", mine["prefill_a"], ref_a)
    compare(f"{case} prefill B", mine["prefill_b"], ref_b)
    compare(f"{case} chunk+decode A", mine["stepwise_a"], ref_a)
    compare(f"{case} varlen (A decode)", mine["varlen"][:1], ref_a[-1:])
    compare(f"{case} varlen (B prefill)", mine["varlen"][1:], ref_b)


def test_smollm2_gguf_matches_transformers(tmp_path):
    assert GGUF.exists(), "run scripts/fetch-model.sh"
    ref = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    check_all("smollm2 gguf", GGUF, ref.eval(), ref.config.vocab_size, tmp_path)


@pytest.mark.parametrize("shape", ["gpt2", "tiny-llama3", "smollm2-135m", "tiny-qwen2"])
def test_dummy_safetensors_match_transformers(shape, tmp_path):
    model_dir = tmp_path / shape
    subprocess.run([str(BINARY), "export-dummy", "--shape", shape, "--seed", "7", "--out", str(model_dir)], check=True)
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    check_all(f"dummy {shape}", model_dir, ref.eval(), ref.config.vocab_size, tmp_path)


def test_gguf_of_every_quant_type_matches_transformers(tmp_path):
    from gguf_fixture import write_tiny_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(str(path))
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    check_all("gguf F32/F16/Q8_0/Q4_0/Q4_1", path, ref.eval(), ref.config.vocab_size, tmp_path)


def test_sharded_safetensors_match_transformers(tmp_path):
    single = tmp_path / "single"
    subprocess.run([str(BINARY), "export-dummy", "--shape", "tiny-llama3", "--seed", "3", "--out", str(single)], check=True)
    ref = AutoModelForCausalLM.from_pretrained(str(single), dtype=torch.float32)
    sharded = tmp_path / "sharded"
    ref.save_pretrained(str(sharded), max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").exists(), shards
    check_all(f"sharded safetensors ({len(shards)} files)", sharded, ref.eval(), ref.config.vocab_size, tmp_path)
