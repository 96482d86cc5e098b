// Causal attention over the vAttention KV region: each sequence's K and V for one layer are dense
// bf16 rows at kv[chunk].k/v + pos * token_stride (kv heads * head_dim elements per row).
//
// Batch description (device arrays, one entry per chunk of the batch):
//   chunk_q_start: first row of the chunk's queries in q/out; chunk_len: its query rows;
//   chunk_start:   position of its first query (so query t sees keys 0..=start + t).
// q and out are [rows, heads, head_dim] bf16.

// ---------------------------------------------------------------------------------------------
// Prefill / chunk: flash-attention style on the tensor cores (mma.sync m16n8k16 bf16, fp32
// accumulation). A block of 4 warps takes 64 query rows of one (chunk, head); each warp 16 rows.
// K and V tiles of 64 keys go through shared memory row-major; the MMA operands come out of it
// with ldmatrix (V's transposed), so nothing is scattered.
// Grid: (tiles, heads); tile_chunk / tile_row0 say which chunk and first row each tile covers.

#define PF_ROWS 64
#define PF_KEYS 64

template <int D>
__device__ __forceinline__ void attn_prefill(const bf16_t* __restrict__ q, bf16_t* __restrict__ out,
                                             const unsigned* tile_chunk, const unsigned* tile_row0,
                                             const unsigned* chunk_q_start, const unsigned* chunk_len,
                                             const unsigned* chunk_start, const u64* kv,
                                             long long token_stride, int heads, int kv_heads,
                                             float scale_log2) {
    // Rows padded by 16 bytes: the 8 rows one ldmatrix phase reads fall in distinct banks.
    __shared__ __align__(16) bf16_t ks[PF_KEYS][D + 8];
    __shared__ __align__(16) bf16_t vs[PF_KEYS][D + 8];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int head = blockIdx.y;
    const int kvh = head / (heads / kv_heads);
    const unsigned c = tile_chunk[blockIdx.x];
    const int row0 = (int)tile_row0[blockIdx.x];
    const int n = (int)chunk_len[c];
    const int start = (int)chunk_start[c];
    const u64 q_first = chunk_q_start[c];
    const u64 row_elems = (u64)heads * D;
    const char* k_base = (const char*)kv[2 * c] + (u64)kvh * D * 2;
    const char* v_base = (const char*)kv[2 * c + 1] + (u64)kvh * D * 2;

    // This warp's two query rows per thread: r_lo = row0 + 16 warp + g, r_hi = r_lo + 8.
    const int r_lo = row0 + warp * 16 + g, r_hi = r_lo + 8;
    const bool ok_lo = r_lo < n, ok_hi = r_hi < n;
    const int pos_lo = start + r_lo, pos_hi = start + r_hi;

    unsigned qa[D / 16][4];
    {
        const bf16_t* ql = q + (q_first + (ok_lo ? r_lo : 0)) * row_elems + (u64)head * D;
        const bf16_t* qh = q + (q_first + (ok_hi ? r_hi : 0)) * row_elems + (u64)head * D;
#pragma unroll
        for (int s = 0; s < D / 16; ++s) {
            int col = s * 16 + tig * 2;
            qa[s][0] = ok_lo ? *(const unsigned*)(ql + col) : 0u;
            qa[s][1] = ok_hi ? *(const unsigned*)(qh + col) : 0u;
            qa[s][2] = ok_lo ? *(const unsigned*)(ql + col + 8) : 0u;
            qa[s][3] = ok_hi ? *(const unsigned*)(qh + col + 8) : 0u;
        }
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_lo = neg_inf(), m_hi = neg_inf(), l_lo = 0.0f, l_hi = 0.0f;

    const int last_row = min(row0 + PF_ROWS, n) - 1;
    const int kv_end = start + last_row + 1;  // keys this tile needs: 0..kv_end
    const int chunks_per_row = D / 8;         // 16-byte pieces per K/V row

    for (int k0 = 0; k0 < kv_end; k0 += PF_KEYS) {
        // Load K then V tiles, each thread's pieces all in flight before any store; rows at or
        // past kv_end are zeros (their memory may be unmapped).
        constexpr int PER_THREAD = PF_KEYS * (D / 8) / 128;
        constexpr int BATCH = PER_THREAD < 4 ? PER_THREAD : 4;
#pragma unroll
        for (int b0 = 0; b0 < PER_THREAD; b0 += BATCH) {
            uint4 kvec[BATCH], vvec[BATCH];
#pragma unroll
            for (int it = 0; it < BATCH; ++it) {
                const int idx = tid + (b0 + it) * 128, r = idx / chunks_per_row, ch = idx % chunks_per_row;
                const bool live = k0 + r < kv_end;
                const u64 off = (u64)(k0 + r) * token_stride + ch * 16;
                kvec[it] = live ? *(const uint4*)(k_base + off) : make_uint4(0, 0, 0, 0);
                vvec[it] = live ? *(const uint4*)(v_base + off) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int it = 0; it < BATCH; ++it) {
                const int idx = tid + (b0 + it) * 128, r = idx / chunks_per_row, ch = idx % chunks_per_row;
                *(uint4*)&ks[r][ch * 8] = kvec[it];
                *(uint4*)&vs[r][ch * 8] = vvec[it];
            }
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and 64 keys.
        float s[PF_KEYS / 8][4];
        // B fragments of K^T: rows of ks are keys, 16 bytes of a row 8 dims; one ldmatrix.x4
        // gives the fragments of two k-steps (dims s*16..s*16+31) for 8 keys.
#pragma unroll
        for (int nt = 0; nt < PF_KEYS / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int ks_ = 0; ks_ < D / 16; ks_ += 2) {
                unsigned b[4];
                ldmatrix_x4(b, &ks[nt * 8 + (lane & 7)][ks_ * 16 + (lane >> 3) * 8]);
                mma_bf16_16816(s[nt], qa[ks_], b[0], b[1]);
                mma_bf16_16816(s[nt], qa[ks_ + 1], b[2], b[3]);
            }
        }
        // Causal mask, scale (log2 domain), row max.
        float mx_lo = neg_inf(), mx_hi = neg_inf();
#pragma unroll
        for (int nt = 0; nt < PF_KEYS / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                int key = k0 + nt * 8 + tig * 2 + e;
                s[nt][e] = key <= pos_lo ? s[nt][e] * scale_log2 : neg_inf();
                s[nt][2 + e] = key <= pos_hi ? s[nt][2 + e] * scale_log2 : neg_inf();
                mx_lo = fmaxf(mx_lo, s[nt][e]);
                mx_hi = fmaxf(mx_hi, s[nt][2 + e]);
            }
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
        // A row with no visible key yet keeps base 0 so that exp2(-inf - base) = 0, never NaN.
        float base_lo = new_lo == neg_inf() ? 0.0f : new_lo;
        float base_hi = new_hi == neg_inf() ? 0.0f : new_hi;
        float alpha_lo = exp2f(m_lo - base_lo), alpha_hi = exp2f(m_hi - base_hi);
        m_lo = new_lo;
        m_hi = new_hi;
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int nt = 0; nt < PF_KEYS / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - base_lo);
            s[nt][1] = exp2f(s[nt][1] - base_lo);
            s[nt][2] = exp2f(s[nt][2] - base_hi);
            s[nt][3] = exp2f(s[nt][3] - base_hi);
            sum_lo += s[nt][0] + s[nt][1];
            sum_hi += s[nt][2] + s[nt][3];
        }
        l_lo = l_lo * alpha_lo + sum_lo;
        l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= alpha_lo;
            o[dt][1] *= alpha_lo;
            o[dt][2] *= alpha_hi;
            o[dt][3] *= alpha_hi;
        }
        // O += P V: P re-packed from the S accumulators as A fragments.
#pragma unroll
        for (int kk = 0; kk < PF_KEYS / 16; ++kk) {
            unsigned pa[4];
            pa[0] = pack_bf2(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack_bf2(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack_bf2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack_bf2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            // B fragments of V (keys kk*16..+15 by dims): transposed ldmatrix of row-major vs;
            // one x4 covers two 8-dim n-tiles.
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                unsigned b[4];
                ldmatrix_x4_trans(b, &vs[kk * 16 + (lane & 15)][dt * 8 + (lane >> 4) * 8]);
                mma_bf16_16816(o[dt], pa, b[0], b[1]);
                mma_bf16_16816(o[dt + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();
    }

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f;
    float inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
    bf16_t* out_lo = out + (q_first + r_lo) * row_elems + (u64)head * D;
    bf16_t* out_hi = out + (q_first + r_hi) * row_elems + (u64)head * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        int col = dt * 8 + tig * 2;
        if (ok_lo) *(unsigned*)(out_lo + col) = pack_bf2(o[dt][0] * inv_lo, o[dt][1] * inv_lo);
        if (ok_hi) *(unsigned*)(out_hi + col) = pack_bf2(o[dt][2] * inv_hi, o[dt][3] * inv_hi);
    }
}

#define PREFILL_ENTRY(NAME, D, MIN_BLOCKS)                                                          \
    extern "C" __global__ void __launch_bounds__(128, MIN_BLOCKS) NAME(                            \
        const bf16_t* q, bf16_t* out, const unsigned* tile_chunk, const unsigned* tile_row0,        \
        const unsigned* chunk_q_start, const unsigned* chunk_len, const unsigned* chunk_start,      \
        const u64* kv, long long token_stride, int heads, int kv_heads, float scale_log2) {         \
        pdl_enter();                                                                                \
        attn_prefill<D>(q, out, tile_chunk, tile_row0, chunk_q_start, chunk_len, chunk_start, kv,   \
                        token_stride, heads, kv_heads, scale_log2);                                 \
    }
PREFILL_ENTRY(attn_prefill_d64, 64, 1)
PREFILL_ENTRY(attn_prefill_d128, 128, 1)
// The same kernel held to 168 registers (3 blocks per SM, some spills): `fused-gpu-bench ops`
// times both.
PREFILL_ENTRY(attn_prefill_d128_occ3, 128, 3)

// ---------------------------------------------------------------------------------------------
// Decode: one query row per sequence, split-KV (flash-decoding). Block (i, kv head, split) scores
// keys split * split_len .. min(ctx, +split_len) for every query head of the kv head's group and
// writes an unnormalised partial output with its max and sum; attn_decode_combine merges splits.
// dec_row[i] is the query row, dec_chunk[i] its chunk; ctx = chunk_start + chunk_len.
// Partials: part_o [dec, heads, splits, D] f32, part_ml [dec, heads, splits, 2] f32.
// Limits: split_len <= DEC_MAX_SPLIT, group (heads / kv_heads) <= G of the entry. Block: 128.

#define DEC_MAX_SPLIT 256
#define DEC_THREADS 128

// G: the largest group (query heads per KV head) this instantiation handles; fewer registers
// for small groups let more key rows be in flight (UNROLL per thread and phase).
template <int D, int G>
__device__ __forceinline__ void attn_decode(const bf16_t* __restrict__ q, const unsigned* dec_row,
                                            const unsigned* dec_chunk, const unsigned* chunk_len,
                                            const unsigned* chunk_start, const u64* kv,
                                            long long token_stride, int heads, int kv_heads,
                                            int split_len, int splits, float scale_log2,
                                            float* part_o, float* part_ml) {
    constexpr int KT = D / 8;                // threads per key row (16 bytes each)
    constexpr int KPI = DEC_THREADS / KT;    // key rows per block per unrolled step
    constexpr int UNROLL = G == 1 ? 8 : 4;
    constexpr int STEP = KPI * UNROLL;       // key rows per block per loop iteration
    __shared__ float scores[G][DEC_MAX_SPLIT];
    __shared__ float red[KPI][D];
    __shared__ float row_m[G], row_l[G];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int i = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int group = heads / kv_heads;
    const unsigned c = dec_chunk[i];
    const int ctx = (int)(chunk_start[c] + chunk_len[c]);
    const int begin = split * split_len;
    const int end = min(ctx, begin + split_len);
    const u64 part = ((u64)i * heads + (u64)kvh * group) * splits + split;  // + g * splits

    if (begin >= end) {
        if (tid < group) {
            part_ml[(part + (u64)tid * splits) * 2] = neg_inf();
            part_ml[(part + (u64)tid * splits) * 2 + 1] = 0.0f;
        }
        return;
    }
    const int nkeys = end - begin;
    const int piece = tid % KT, key_off = tid / KT;
    const char* k_base = (const char*)kv[2 * c] + (u64)kvh * D * 2 + piece * 16 + (u64)begin * token_stride;
    const char* v_base = (const char*)kv[2 * c + 1] + (u64)kvh * D * 2 + piece * 16 + (u64)begin * token_stride;

    float qv[G][8];
    const bf16_t* qrow = q + (u64)dec_row[i] * heads * D + (u64)kvh * group * D + piece * 8;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g < group) {
            uint4 raw = *(const uint4*)(qrow + (u64)g * D);
            const bf16_t* e = (const bf16_t*)&raw;
#pragma unroll
            for (int j = 0; j < 8; ++j) qv[g][j] = bf2f(e[j]) * scale_log2;
        }
    }
    // Scores. Every thread runs the same iterations (the shuffles need the whole warp); each
    // issues UNROLL independent loads before using any.
    for (int kb = 0; kb < nkeys; kb += STEP) {
        uint4 raw[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + u * KPI + key_off;
            raw[u] = k < nkeys ? *(const uint4*)(k_base + (u64)k * token_stride) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + u * KPI + key_off;
            const bf16_t* e = (const bf16_t*)&raw[u];
            float kf[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) kf[j] = bf2f(e[j]);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g < group) {
                    float d = 0.0f;
#pragma unroll
                    for (int j = 0; j < 8; ++j) d += qv[g][j] * kf[j];
#pragma unroll
                    for (int o = KT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                    if (k < nkeys && piece == 0) scores[g][k] = d;
                }
            }
        }
    }
    __syncthreads();
    // Softmax of each query head over this split: warp w takes heads w, w + 4, ...
    for (int g = warp; g < group; g += DEC_THREADS / 32) {
        float mx = neg_inf();
        for (int k = lane; k < nkeys; k += 32) mx = fmaxf(mx, scores[g][k]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int k = lane; k < nkeys; k += 32) {
            float p = exp2f(scores[g][k] - mx);
            scores[g][k] = p;
            sum += p;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            row_m[g] = mx;
            row_l[g] = sum;
        }
    }
    __syncthreads();
    // P V: each V row is loaded once and used for every query head of the group.
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = 0.0f;
    for (int kb = 0; kb < nkeys; kb += STEP) {
        uint4 raw[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + u * KPI + key_off;
            raw[u] = k < nkeys ? *(const uint4*)(v_base + (u64)k * token_stride) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int k = kb + u * KPI + key_off;
            if (k < nkeys) {
                const bf16_t* e = (const bf16_t*)&raw[u];
                float vf[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) vf[j] = bf2f(e[j]);
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    if (g < group) {
                        float p = scores[g][k];
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[g][j] += p * vf[j];
                    }
                }
            }
        }
    }
    // Reduce the KPI key groups, one query head at a time through shared memory.
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g < group) {
#pragma unroll
            for (int j = 0; j < 8; ++j) red[key_off][piece * 8 + j] = acc[g][j];
            __syncthreads();
            for (int d = tid; d < D; d += DEC_THREADS) {
                float s = 0.0f;
#pragma unroll
                for (int r = 0; r < KPI; ++r) s += red[r][d];
                part_o[(part + (u64)g * splits) * D + d] = s;
            }
            if (tid == 0) {
                part_ml[(part + (u64)g * splits) * 2] = row_m[g];
                part_ml[(part + (u64)g * splits) * 2 + 1] = row_l[g];
            }
            __syncthreads();
        }
    }
}

#define DECODE_ENTRY(D, G)                                                                          \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_d##D##_g##G(             \
        const bf16_t* q, const unsigned* dec_row, const unsigned* dec_chunk,                        \
        const unsigned* chunk_len, const unsigned* chunk_start, const u64* kv,                      \
        long long token_stride, int heads, int kv_heads, int split_len, int splits,                 \
        float scale_log2, float* part_o, float* part_ml) {                                          \
        pdl_enter();                                                                                \
        attn_decode<D, G>(q, dec_row, dec_chunk, chunk_len, chunk_start, kv, token_stride, heads,   \
                          kv_heads, split_len, splits, scale_log2, part_o, part_ml);                \
    }
DECODE_ENTRY(64, 1)
DECODE_ENTRY(64, 4)
DECODE_ENTRY(64, 8)
DECODE_ENTRY(128, 1)
DECODE_ENTRY(128, 4)
DECODE_ENTRY(128, 8)

// out[dec_row[i], head, :] = merge of the head's split partials (bf16). A row with no key at all
// (padding) gets zeros. Grid: (dec, heads); block: head_dim threads.
extern "C" __global__ void attn_decode_combine(const float* part_o, const float* part_ml,
                                               const unsigned* dec_row, bf16_t* out, int heads,
                                               int head_dim, int splits) {
    pdl_enter();
    const int i = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    const u64 part = ((u64)i * heads + head) * splits;
    float mx = neg_inf();
    for (int s = 0; s < splits; ++s)
        if (part_ml[(part + s) * 2 + 1] > 0.0f) mx = fmaxf(mx, part_ml[(part + s) * 2]);
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < splits; ++s) {
        float l = part_ml[(part + s) * 2 + 1];
        if (l > 0.0f) {
            float w = exp2f(part_ml[(part + s) * 2] - mx);
            num += w * part_o[(part + s) * head_dim + d];
            den += w * l;
        }
    }
    out[(u64)dec_row[i] * heads * head_dim + (u64)head * head_dim + d] = f2bf(den > 0.0f ? num / den : 0.0f);
}
