"""Writes a tiny llama-architecture GGUF whose tensors use every type the loader must dequantise
(F32, F16, Q8_0, Q4_0, Q4_1), with Q/K rows permuted the way llama.cpp's converter stores them."""

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2, 64, 128, 4, 2, 256
TYPES = [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1]


def _permute(x, n_head):
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def write_tiny_gguf(path: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([1] * VOCAB)

    def add(name, arr, qtype):
        arr = arr.astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    def mat(rows, cols):
        return rng.uniform(-0.1, 0.1, (rows, cols))

    add("token_embd.weight", mat(VOCAB, HIDDEN), Q.Q4_0)
    for layer in range(LAYERS):
        a, b = TYPES[layer % 4], TYPES[(layer + 2) % 4]
        add(f"blk.{layer}.attn_norm.weight", rng.uniform(0.8, 1.2, (HIDDEN,)), Q.F32)
        add(f"blk.{layer}.ffn_norm.weight", rng.uniform(0.8, 1.2, (HIDDEN,)), Q.F32)
        add(f"blk.{layer}.attn_q.weight", _permute(mat(HIDDEN, HIDDEN), HEADS), a)
        add(f"blk.{layer}.attn_k.weight", _permute(mat(KV_HEADS * head_dim, HIDDEN), KV_HEADS), b)
        add(f"blk.{layer}.attn_v.weight", mat(KV_HEADS * head_dim, HIDDEN), a)
        add(f"blk.{layer}.attn_output.weight", mat(HIDDEN, HIDDEN), b)
        add(f"blk.{layer}.ffn_gate.weight", mat(FFN, HIDDEN), a)
        add(f"blk.{layer}.ffn_up.weight", mat(FFN, HIDDEN), b)
        add(f"blk.{layer}.ffn_down.weight", mat(HIDDEN, FFN), a)
    add("output_norm.weight", rng.uniform(0.8, 1.2, (HIDDEN,)), Q.F32)
    add("output.weight", mat(VOCAB, HIDDEN), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
