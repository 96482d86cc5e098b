// The persistent decode kernel (issue 19; docs/ARCHITECTURE.md "The persistent decode kernel"):
// every layer of one decode step of one sequence in a single launch, one block per SM, the
// blocks meeting at a grid barrier between the five stages of a layer:
//   A  RMSNorm (each block, from the f32 residual) + QKV rows in rotation pairs + RoPE; Q to
//      `q`, K and V appended to the layer's KV rows at the token's position
//   B  attention of each (KV head, split of the context) → partial outputs and log-sum-exps
//   C  the splits merged (each block, all heads) + O rows, added to the residual by their owner
//   D  RMSNorm + gate and up rows in pairs + SwiGLU → `act`
//   E  down rows, added to the residual by their owner
// Before each barrier a block asks L2 for the first bytes of its weights of the next stage, so
// they stream while the grid waits; what other blocks wrote during the launch is read from L2. Llama-family blocks with bf16 weights and no biases;
// batch 1. Launched cooperatively (the driver refuses a grid that cannot be co-resident: the
// barrier would never release). Grid: one block per SM; block 256; dynamic shared memory
// `persist_smem_bytes` (host side).
//
// Parameters: `table[layer * 6 + j]`: attn_norm weight (f32), qkv (bf16 [q + 2 kv, hidden]),
// o (bf16 [hidden, q]), mlp_norm weight (f32), gate_up (bf16 [2 ffn, hidden]: gate rows then up
// rows), down (bf16 [hidden, ffn]). `kv[layer * per_layer + 0 / 1]`: the sequence's K / V rows of
// the layer (bytes; row `pos` at `pos * token_stride`). `dims`: hidden, heads, kv_heads,
// head_dim, ffn, layers, per_layer, splits. `counter`: arrivals at the grid barriers, never reset;
// the k-th barrier of this launch releases at `base + k * gridDim.x`. `timers` (may be null):
// `[layers][PD_STAGES][blocks][2]` ns of each block's work and wait per stage.

#define PD_THREADS 256
#define PD_WARPS (PD_THREADS / 32)
// Most keys one (KV head, split) holds in shared memory (the host picks the splits).
#define PD_MAX_SPLIT_KEYS 512
// Bytes of the next stage's weights each block asks L2 for before a barrier.
#define PD_PREFETCH_BYTES (64 * 1024)
// Stages of a layer (A to E).
#define PD_STAGES 5

struct PdDims {
    int hidden, heads, kv_heads, head_dim, ffn, layers, per_layer, splits;
};

__device__ __forceinline__ unsigned long long pd_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ void pd_barrier(unsigned long long* counter, unsigned long long target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(counter) : "memory");
        unsigned long long seen;
        for (;;) {
            asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(seen) : "l"(counter) : "memory");
            if (seen >= target) break;
            __nanosleep(20);
        }
        // What the other blocks wrote before arriving is visible to this block's threads (the
        // barrier below orders their reads after this).
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
    }
    __syncthreads();
}

// Ends stage `stage` of `layer`: the block's threads meet, then (`wait`) the grid's blocks. With
// `timers`, thread 0 records the block's work (from `*stage_start` to the block's meeting) and
// its wait for the grid, in ns, at (layer, stage, block).
__device__ __forceinline__ void pd_end_stage(unsigned long long* counter, unsigned long long* barrier,
                                             unsigned long long* timers, int layer, int stage,
                                             unsigned long long* stage_start, bool wait) {
    __syncthreads();
    const unsigned long long worked = pd_now();
    if (wait) {
        *barrier += gridDim.x;
        pd_barrier(counter, *barrier);
    }
    if (timers && threadIdx.x == 0) {
        const unsigned long long released = pd_now();
        u64* t = timers + 2 * (((u64)layer * PD_STAGES + stage) * gridDim.x + blockIdx.x);
        t[0] = worked - *stage_start;
        t[1] = released - worked;
        *stage_start = released;
    }
}

// Asks L2 for up to PD_PREFETCH_BYTES of [p, p + bytes).
__device__ __forceinline__ void pd_prefetch(const void* p, u64 bytes) {
    const u64 n = min(bytes, (u64)PD_PREFETCH_BYTES);
    for (u64 off = (u64)threadIdx.x * 128; off < n; off += (u64)PD_THREADS * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"((const char*)p + off));
}

// Loads of what other blocks wrote during this launch: from L2 (`.cg`), never a line this SM's
// L1 kept from before the barrier.
__device__ __forceinline__ float pd_ld_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

__device__ __forceinline__ float pd_ld_bf16(const bf16_t* p) {
    unsigned short v;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return bf2f(v);
}

__device__ __forceinline__ uint4 pd_ld_v4(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ uint4 pd_load(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Dot products of one or two bf16 weight rows (`n` values, a multiple of 8) with a bf16 vector
// in shared memory, summed over the warp (every lane gets them).
template <bool TWO>
__device__ __forceinline__ void pd_rows_dot(const bf16_t* __restrict__ w0, const bf16_t* __restrict__ w1,
                                            const bf16_t* xs, int n, int lane, float* d0, float* d1) {
    float a0 = 0.0f, a1 = 0.0f;
    const uint4* r0 = (const uint4*)w0;
    const uint4* r1 = (const uint4*)w1;
    const uint4* xv = (const uint4*)xs;
    const int chunks = n / 8;
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
        const uint4 v0 = pd_load(r0 + c);
        uint4 v1;
        if (TWO) v1 = pd_load(r1 + c);
        float x[8], w[8];
        unpack8(xv[c], x);
        unpack8(v0, w);
#pragma unroll
        for (int j = 0; j < 8; ++j) a0 += w[j] * x[j];
        if (TWO) {
            unpack8(v1, w);
#pragma unroll
            for (int j = 0; j < 8; ++j) a1 += w[j] * x[j];
        }
    }
    *d0 = warp_sum(a0);
    if (TWO) *d1 = warp_sum(a1);
}

// x[row] += w[row] · vec for this block's rows [first, end) of a weight of `n` columns: two rows
// a warp at a time (twice the bytes in flight of one), the odd last row alone.
__device__ __forceinline__ void pd_add_rows(const bf16_t* w, const bf16_t* vec, int n, int first,
                                            int end, float* x, int warp, int lane) {
    for (int row = first + 2 * warp; row < end; row += 2 * PD_WARPS) {
        float y0, y1 = 0.0f;
        const bool two = row + 1 < end;
        if (two) pd_rows_dot<true>(w + (u64)row * n, w + (u64)(row + 1) * n, vec, n, lane, &y0, &y1);
        else pd_rows_dot<false>(w + (u64)row * n, nullptr, vec, n, lane, &y0, &y1);
        if (lane == 0) {
            x[row] = pd_ld_f32(x + row) + y0;
            if (two) x[row + 1] = pd_ld_f32(x + row + 1) + y1;
        }
    }
}

// out[i] = bf16(x[i] · rstd · weight[i]): RMSNorm of the residual into shared memory.
__device__ __forceinline__ void pd_rms_norm(const float* x, const float* weight, bf16_t* out, int n,
                                            float eps) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += PD_THREADS) {
        const float v = pd_ld_f32(x + i);
        ss += v * v;
    }
    const float rstd = rsqrtf(block_sum(ss) / n + eps);
    for (int i = threadIdx.x; i < n; i += PD_THREADS) out[i] = f2bf(pd_ld_f32(x + i) * rstd * weight[i]);
    __syncthreads();
}

// This block's share [first, end) of `total` equal items.
__device__ __forceinline__ void pd_share(int total, int* first, int* end) {
    *first = (int)((long long)total * blockIdx.x / gridDim.x);
    *end = (int)((long long)total * (blockIdx.x + 1) / gridDim.x);
}

extern "C" __global__ void __launch_bounds__(PD_THREADS, 1) decode_persistent(
    const u64* table, const u64* kv, const unsigned* positions, const unsigned* dims_in, float* x,
    bf16_t* q_buf, float* part_o, float* part_ml, bf16_t* act, unsigned long long* counter,
    const float* cos_table, const float* sin_table, long long token_stride, float eps,
    float scale_log2, unsigned long long base, unsigned long long* timers) {
    extern __shared__ __align__(16) unsigned char pd_smem[];
    const PdDims d = *(const PdDims*)dims_in;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = d.head_dim, half = hd / 2;
    const int q_dim = d.heads * hd, kv_dim = d.kv_heads * hd;
    const int group = d.heads / d.kv_heads;
    const unsigned pos = positions[0];
    const int n_keys = (int)pos + 1;
    unsigned long long barrier = base;
    bf16_t* vec = (bf16_t*)pd_smem;  // the stage's input vector (normed x, attention, act)
    // With `timers`: per (layer, stage, block), ns of own work and of waiting at the barrier.
    unsigned long long stage_start = pd_now();
    for (int layer = 0; layer < d.layers; ++layer) {
        const u64* t = table + (u64)layer * 6;
        const float* attn_norm = (const float*)t[0];
        const bf16_t* w_qkv = (const bf16_t*)t[1];
        const bf16_t* w_o = (const bf16_t*)t[2];
        const float* mlp_norm = (const float*)t[3];
        const bf16_t* w_gu = (const bf16_t*)t[4];
        const bf16_t* w_down = (const bf16_t*)t[5];
        char* k_rows = (char*)kv[(u64)layer * d.per_layer];
        char* v_rows = (char*)kv[(u64)layer * d.per_layer + 1];
        int first, end;

        // A: QKV in rotation pairs (and V rows in pairs), RoPE, K/V appended.
        pd_rms_norm(x, attn_norm, vec, d.hidden, eps);
        const int rot_pairs = (d.heads + d.kv_heads) * half;
        pd_share(rot_pairs + kv_dim / 2, &first, &end);
        for (int item = first + warp; item < end; item += PD_WARPS) {
            int r0, r1;
            if (item < rot_pairs) {
                r0 = (item / half) * hd + item % half;
                r1 = r0 + half;
            } else {
                r0 = q_dim + kv_dim + 2 * (item - rot_pairs);
                r1 = r0 + 1;
            }
            float y0, y1;
            pd_rows_dot<true>(w_qkv + (u64)r0 * d.hidden, w_qkv + (u64)r1 * d.hidden, vec, d.hidden,
                              lane, &y0, &y1);
            if (lane != 0) continue;
            if (item < rot_pairs) {
                const int i = item % half;
                if (cos_table) {
                    const float c = cos_table[(u64)pos * half + i], s = sin_table[(u64)pos * half + i];
                    const float x0 = y0, x1 = y1;
                    y0 = x0 * c - x1 * s;
                    y1 = x1 * c + x0 * s;
                }
                if (r0 < q_dim) {
                    q_buf[r0] = f2bf(y0);
                    q_buf[r1] = f2bf(y1);
                } else {
                    bf16_t* k = (bf16_t*)(k_rows + (u64)pos * token_stride);
                    k[r0 - q_dim] = f2bf(y0);
                    k[r1 - q_dim] = f2bf(y1);
                }
            } else {
                bf16_t* v = (bf16_t*)(v_rows + (u64)pos * token_stride);
                v[r0 - q_dim - kv_dim] = f2bf(y0);
                v[r1 - q_dim - kv_dim] = f2bf(y1);
            }
        }
        pd_end_stage(counter, &barrier, timers, layer, 0, &stage_start, true);

        // B: attention of each (KV head, split) over its keys.
        {
            const int units = d.kv_heads * d.splits;
            const int split_len = (n_keys + d.splits - 1) / d.splits;
            float* qs = (float*)pd_smem;                       // [group][hd]
            float* scores = qs + group * hd;                   // [group][PD_MAX_SPLIT_KEYS]
            float* stats = scores + group * PD_MAX_SPLIT_KEYS;  // [group][2]
            for (int unit = blockIdx.x; unit < units; unit += gridDim.x) {
                const int kvh = unit / d.splits, split = unit % d.splits;
                const int k0 = min(n_keys, split * split_len), k1 = min(n_keys, k0 + split_len);
                const int nk = k1 - k0;
                for (int i = threadIdx.x; i < group * hd; i += PD_THREADS)
                    qs[i] = pd_ld_bf16(q_buf + (u64)(kvh * group + i / hd) * hd + i % hd) * scale_log2;
                __syncthreads();
                // Scores: a warp per key; each lane takes hd / 32 elements of the row.
                for (int k = warp; k < nk; k += PD_WARPS) {
                    const bf16_t* key = (const bf16_t*)(k_rows + (u64)(k0 + k) * token_stride) + kvh * hd;
                    for (int g = 0; g < group; ++g) {
                        float s = 0.0f;
                        for (int e = lane; e < hd; e += 32) s += qs[g * hd + e] * pd_ld_bf16(key + e);
                        s = warp_sum(s);
                        if (lane == 0) scores[g * PD_MAX_SPLIT_KEYS + k] = s;
                    }
                }
                __syncthreads();
                // Softmax statistics of each head (a warp per head), probabilities in place.
                for (int g = warp; g < group; g += PD_WARPS) {
                    float* sc = scores + g * PD_MAX_SPLIT_KEYS;
                    float mx = neg_inf();
                    for (int k = lane; k < nk; k += 32) mx = fmaxf(mx, sc[k]);
                    mx = warp_max(mx);
                    float sum = 0.0f;
                    for (int k = lane; k < nk; k += 32) {
                        const float p = exp2f(sc[k] - mx);
                        sc[k] = p;
                        sum += p;
                    }
                    sum = warp_sum(sum);
                    if (lane == 0) stats[2 * g] = mx, stats[2 * g + 1] = sum;
                }
                __syncthreads();
                // P V: a thread per (head, element).
                for (int i = threadIdx.x; i < group * hd; i += PD_THREADS) {
                    const int g = i / hd, e = i % hd;
                    const float* p = scores + g * PD_MAX_SPLIT_KEYS;
                    float o = 0.0f;
                    for (int k = 0; k < nk; ++k)
                        o += p[k] * pd_ld_bf16((const bf16_t*)(v_rows + (u64)(k0 + k) * token_stride) + kvh * hd + e);
                    const u64 part = (u64)(kvh * group + g) * d.splits + split;
                    part_o[part * hd + e] = o;
                    if (e == 0) {
                        part_ml[2 * part] = nk > 0 ? stats[2 * g] : neg_inf();
                        part_ml[2 * part + 1] = nk > 0 ? stats[2 * g + 1] : 0.0f;
                    }
                }
                __syncthreads();
            }
        }
        pd_share(d.hidden, &first, &end);
        pd_prefetch(w_o + (u64)first * q_dim, (u64)(end - first) * q_dim * 2);
        pd_end_stage(counter, &barrier, timers, layer, 1, &stage_start, true);

        // C: merge the splits of every head (each block), O rows added to the residual.
        for (int i = threadIdx.x; i < q_dim; i += PD_THREADS) {
            const u64 part = (u64)(i / hd) * d.splits;
            float mx = neg_inf();
            for (int s = 0; s < d.splits; ++s)
                if (pd_ld_f32(part_ml + 2 * (part + s) + 1) > 0.0f)
                    mx = fmaxf(mx, pd_ld_f32(part_ml + 2 * (part + s)));
            float num = 0.0f, den = 0.0f;
            for (int s = 0; s < d.splits; ++s) {
                const float l = pd_ld_f32(part_ml + 2 * (part + s) + 1);
                if (l > 0.0f) {
                    const float w = exp2f(pd_ld_f32(part_ml + 2 * (part + s)) - mx);
                    num += w * pd_ld_f32(part_o + (part + s) * hd + i % hd);
                    den += w * l;
                }
            }
            vec[i] = f2bf(den > 0.0f ? num / den : 0.0f);
        }
        __syncthreads();
        pd_add_rows(w_o, vec, q_dim, first, end, x, warp, lane);
        pd_share(d.ffn, &first, &end);
        pd_prefetch(w_gu + (u64)first * d.hidden, (u64)(end - first) * d.hidden * 2);
        pd_prefetch(w_gu + (u64)(d.ffn + first) * d.hidden, (u64)(end - first) * d.hidden * 2);
        pd_end_stage(counter, &barrier, timers, layer, 2, &stage_start, true);

        // D: gate and up rows in pairs, SwiGLU.
        pd_rms_norm(x, mlp_norm, vec, d.hidden, eps);
        for (int i = first + warp; i < end; i += PD_WARPS) {
            float g, u;
            pd_rows_dot<true>(w_gu + (u64)i * d.hidden, w_gu + (u64)(d.ffn + i) * d.hidden, vec, d.hidden,
                              lane, &g, &u);
            if (lane == 0) act[i] = f2bf(swiglu(g, u));
        }
        pd_share(d.hidden, &first, &end);
        pd_prefetch(w_down + (u64)first * d.ffn, (u64)(end - first) * d.ffn * 2);
        pd_end_stage(counter, &barrier, timers, layer, 3, &stage_start, true);

        // E: down rows added to the residual.
        for (int i = threadIdx.x; i < d.ffn / 8; i += PD_THREADS) ((uint4*)vec)[i] = pd_ld_v4((const uint4*)act + i);
        __syncthreads();
        pd_add_rows(w_down, vec, d.ffn, first, end, x, warp, lane);
        const bool more = layer + 1 < d.layers;
        if (more) {
            pd_share(rot_pairs + kv_dim / 2, &first, &end);
            const bf16_t* next_qkv = (const bf16_t*)table[(u64)(layer + 1) * 6 + 1];
            pd_prefetch(next_qkv + (u64)((first / half) * hd + first % half) * d.hidden,
                        (u64)d.hidden * 2 * 16);
        }
        pd_end_stage(counter, &barrier, timers, layer, 4, &stage_start, more);
    }
}
