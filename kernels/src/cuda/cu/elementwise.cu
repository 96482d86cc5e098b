// Row-wise and element-wise kernels of the forward pass: embedding gather (with learned positions),
// RMSNorm and LayerNorm, RoPE with the K/V scatter into the KV region, SwiGLU, GELU and bias adds,
// greedy sampling, and seeded fills for dummy weights.

// x[r, :] = table[tokens[r], :] + pos_table[positions[r], :] (bf16 tables, f32 residual stream;
// no position row when pos_table is null (RoPE models) or the row is padding, position
// 0xffffffff). Grid: rows.
extern "C" __global__ void embed_rows(const unsigned* tokens, const bf16_t* table,
                                      const unsigned* positions, const bf16_t* pos_table, float* x,
                                      int hidden) {
    pdl_enter();
    const bf16_t* src = table + (u64)tokens[blockIdx.x] * hidden;
    const unsigned pos = pos_table ? positions[blockIdx.x] : 0xffffffffu;
    const bf16_t* add = pos == 0xffffffffu ? 0 : pos_table + (u64)pos * hidden;
    float* dst = x + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        dst[i] = add ? bf2f(src[i]) + bf2f(add[i]) : bf2f(src[i]);
}

// out[r, :] = norm(x[m(r), :]) * weight (+ bias), m = row_map (identity when null): RMSNorm when
// bias is null (Llama family), LayerNorm otherwise (the row's mean subtracted first, bias added:
// GPT-2). f32 in, bf16 out; 4 elements per access when hidden is a multiple of 4. Grid: output
// rows; block: 256 threads.
extern "C" __global__ void norm_rows(const float* x, const float* weight, const float* bias,
                                     bf16_t* out, const unsigned* row_map, int hidden, float eps) {
    pdl_enter();
    unsigned src_row = row_map ? row_map[blockIdx.x] : blockIdx.x;
    const float* row = x + (u64)src_row * hidden;
    bf16_t* o = out + (u64)blockIdx.x * hidden;
    if ((hidden & 3) == 0) {
        const float4* row4 = (const float4*)row;
        const float4* w4 = (const float4*)weight;
        const float4* b4 = (const float4*)bias;
        float mean = 0.0f;
        if (bias) {
            float s = 0.0f;
            for (int i = threadIdx.x; i < hidden / 4; i += blockDim.x) {
                float4 v = row4[i];
                s += v.x + v.y + v.z + v.w;
            }
            mean = block_sum(s) / (float)hidden;
        }
        float ss = 0.0f;
        for (int i = threadIdx.x; i < hidden / 4; i += blockDim.x) {
            float4 v = row4[i];
            v = make_float4(v.x - mean, v.y - mean, v.z - mean, v.w - mean);
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        float inv = rsqrtf(block_sum(ss) / (float)hidden + eps);
        for (int i = threadIdx.x; i < hidden / 4; i += blockDim.x) {
            float4 v = row4[i], w = w4[i], b = bias ? b4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
            uint2 packed = make_uint2(
                pack_bf2((v.x - mean) * inv * w.x + b.x, (v.y - mean) * inv * w.y + b.y),
                pack_bf2((v.z - mean) * inv * w.z + b.z, (v.w - mean) * inv * w.w + b.w));
            *(uint2*)(o + 4 * i) = packed;
        }
        return;
    }
    float mean = 0.0f;
    if (bias) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < hidden; i += blockDim.x) s += row[i];
        mean = block_sum(s) / (float)hidden;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += (row[i] - mean) * (row[i] - mean);
    float inv = rsqrtf(block_sum(ss) / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        o[i] = f2bf((row[i] - mean) * inv * weight[i] + (bias ? bias[i] : 0.0f));
}

// RoPE (rotate-half) on Q and K of one row of `qkv` (f32, [q | k | v]) plus `bias` (the same
// [q | k | v] vector for every row, added before the rotation: Qwen2's; null for none); Q goes to `q_out` (bf16),
// K and V are written (bf16) into the KV region at kv[chunk].k/v + pos * token_stride. A row
// whose position is 0xffffffff is padding: its Q is computed at position 0 and its K/V skipped.
// `kv` holds (k, v) device addresses per chunk for this layer. Grid: (rows, parts); block: 256;
// the row's rotation pairs and V elements are spread over the parts' threads (one or a few each:
// a single block looping over a row is bound by load latency).
extern "C" __global__ void rope_kv_write(const float* qkv, const float* bias, bf16_t* q_out,
                                         const unsigned* positions,
                                         const unsigned* row_chunk, const u64* kv,
                                         long long token_stride, const float* cos_table,
                                         const float* sin_table, int heads, int kv_heads,
                                         int head_dim, int use_rope) {
    pdl_enter();
    const int r = blockIdx.x;
    const int first = blockIdx.y * blockDim.x + threadIdx.x, step = gridDim.y * blockDim.x;
    const int half = head_dim / 2;
    const int q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    const float* row = qkv + (u64)r * (q_dim + 2 * kv_dim);
    unsigned pos = positions[r];
    const bool pad = pos == 0xffffffffu;
    if (pad) pos = 0;
    const float* cs = cos_table + (u64)pos * half;
    const float* sn = sin_table + (u64)pos * half;
    const unsigned c = row_chunk[r];
    bf16_t* k_dst = pad ? 0 : (bf16_t*)(kv[2 * c] + (u64)pos * token_stride);
    bf16_t* v_dst = pad ? 0 : (bf16_t*)(kv[2 * c + 1] + (u64)pos * token_stride);
    const int rot_pairs = (heads + kv_heads) * half;
    for (int p = first; p < rot_pairs; p += step) {
        const int head = p / half, i = p % half;
        const int base = head * head_dim;  // heads then kv heads: K follows Q in the row
        float x0 = row[base + i], x1 = row[base + i + half];
        if (bias) {
            x0 += bias[base + i];
            x1 += bias[base + i + half];
        }
        float y0 = x0, y1 = x1;
        if (use_rope) {
            y0 = x0 * cs[i] - x1 * sn[i];
            y1 = x1 * cs[i] + x0 * sn[i];
        }
        if (head < heads) {
            bf16_t* q = q_out + (u64)r * q_dim + base;
            q[i] = f2bf(y0);
            q[i + half] = f2bf(y1);
        } else if (!pad) {
            const int kb = base - q_dim;
            k_dst[kb + i] = f2bf(y0);
            k_dst[kb + i + half] = f2bf(y1);
        }
    }
    if (!pad) {
        const float* v = row + q_dim + kv_dim;
        const float* vb = bias ? bias + q_dim + kv_dim : 0;
        for (int i = first; i < kv_dim; i += step) v_dst[i] = f2bf(vb ? v[i] + vb[i] : v[i]);
    }
}

// out[r, j] = silu(gu[r, j]) * gu[r, ffn + j]; bf16 in and out, 8 elements (16 bytes) per
// thread when ffn is a multiple of 8. Grid: (ceil(ffn / 8 / 256), rows); block: 256.
extern "C" __global__ void silu_mul_rows(const bf16_t* gu, bf16_t* out, int rows, int ffn) {
    pdl_enter();
    const int r = blockIdx.y;
    const bf16_t* g = gu + (u64)r * 2 * ffn;
    const bf16_t* u = g + ffn;
    bf16_t* o = out + (u64)r * ffn;
    const int j0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (j0 >= ffn) return;
    if ((ffn & 7) == 0) {
        uint4 gv = *(const uint4*)(g + j0), uv = *(const uint4*)(u + j0), ov;
        const bf16_t* ge = (const bf16_t*)&gv;
        const bf16_t* ue = (const bf16_t*)&uv;
        unsigned* oe = (unsigned*)&ov;
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            float a = bf2f(ge[j]), b = bf2f(ge[j + 1]);
            oe[j / 2] = pack_bf2(swiglu(a, bf2f(ue[j])), swiglu(b, bf2f(ue[j + 1])));
        }
        *(uint4*)(o + j0) = ov;
    } else {
        for (int j = j0; j < min(j0 + 8, ffn); ++j) {
            o[j] = f2bf(swiglu(bf2f(g[j]), bf2f(u[j])));
        }
    }
}

// out[r, j] = gelu(in[r, j] + bias[j]), GELU's tanh approximation (GPT-2's `gelu_new`); bf16 in
// and out, f32 bias. Grid: (ceil(n / 256), rows); block: 256.
extern "C" __global__ void gelu_bias_rows(const bf16_t* in, const float* bias, bf16_t* out, int n) {
    pdl_enter();
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const u64 at = (u64)blockIdx.y * n + j;
    const float v = bf2f(in[at]) + bias[j];
    const float inner = 0.7978845608f * (v + 0.044715f * v * v * v);
    out[at] = f2bf(0.5f * v * (1.0f + tanhf(inner)));
}

// x[r, j] += bias[j] (f32): the bias of a projection whose product was added to x. Grid:
// (ceil(n / 256), rows); block: 256.
extern "C" __global__ void add_bias_rows(float* x, const float* bias, int n) {
    pdl_enter();
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) x[(u64)blockIdx.y * n + j] += bias[j];
}

// out[r] = the first index of the largest value of logits[r, :] (NaN is never the largest).
// Grid: rows; block: 1024.
extern "C" __global__ void argmax_rows(const float* logits, unsigned* out, int vocab) {
    pdl_enter();
    const float* row = logits + (u64)blockIdx.x * vocab;
    float best = neg_inf();
    unsigned best_i = 0xffffffffu;
    // Four loads in flight per thread (a thread's indices stay increasing: first index wins).
    for (int i0 = threadIdx.x; i0 < vocab; i0 += 4 * blockDim.x) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int i = i0 + u * blockDim.x;
            v[u] = i < vocab ? row[i] : neg_inf();
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int i = i0 + u * blockDim.x;
            if (i < vocab && (v[u] > best || (best_i == 0xffffffffu && v[u] == v[u]))) {
                best = v[u];
                best_i = i;
            }
        }
    }
    __shared__ float sv[32];
    __shared__ unsigned si[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        unsigned oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (ov > best || (ov == best && oi < best_i)) { best = ov; best_i = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = best; si[warp] = best_i; }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        best = lane < warps ? sv[lane] : neg_inf();
        best_i = lane < warps ? si[lane] : 0xffffffffu;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            unsigned oi = __shfl_xor_sync(0xffffffffu, best_i, o);
            if (ov > best || (ov == best && oi < best_i)) { best = ov; best_i = oi; }
        }
        if (lane == 0) out[blockIdx.x] = best_i == 0xffffffffu ? 0 : best_i;
    }
}

__device__ __forceinline__ float uniform01(u64 seed, u64 i) {
    u64 z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// out[i] = uniform(lo, hi) from a counter-based hash of (seed, i): seeded dummy weights.
extern "C" __global__ void fill_uniform_bf16(bf16_t* out, u64 n, u64 seed, float lo, float hi) {
    pdl_enter();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(lo + (hi - lo) * uniform01(seed, i));
}

extern "C" __global__ void fill_uniform_f32(float* out, u64 n, u64 seed, float lo, float hi) {
    pdl_enter();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = lo + (hi - lo) * uniform01(seed, i);
}
