// Matrix-vector products for decode batches of a few rows: y[r, o] = x[r, :] · W[o, :] for
// r < rows <= R, bf16 x, W row-major [out, in] bf16 (in a multiple of 8) or FP8 E4M3 with a scale
// per row (in a multiple of 16; `fp8.cu`, widened in registers, the scale applied to the sum),
// fp32 accumulation. Two builds: a warp per weight row (this section) and the tensor-core one
// (below); `GemvBuild` in `linear.rs` picks (the tensor cores except bf16 weights at one row).
// cuBLAS's GEMMs leave bandwidth unused at one to eight rows; here a warp streams one weight row
// (two with PAIR), or the ksplit-th part of one, with 16-byte loads, UNROLL of them in flight per
// lane, and x stays in L1. Splitting rows over ksplit warps of a block keeps enough loads in flight
// when a matrix has few rows (the block adds the parts). Weights never change while kernels run,
// so each warp issues its first loads before waiting for the previous kernel (programmatic
// dependent launch).
// Output mode: 0 y f32 = result, 1 y f32 += result, 2 y bf16 = result,
// 3 (PAIR) y bf16 [rows, out] = silu(x · W[o]) · (x · W[out + o]): SwiGLU of a stacked
// [gate; up] weight of 2 out rows. Grid: ceil(out · ksplit / 8); block 256; ksplit in 1, 2, 4, 8.

// Build-time knobs (the benchmark sweeps them with `Kernels::load_with`): loads in flight per
// lane, and whether weights bypass L1 (streamed once: `ld.global.nc.L1::no_allocate`).
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 2
#endif
#ifndef GEMV_NC
#define GEMV_NC 1
#endif

__device__ __forceinline__ uint4 load_weights(const uint4* p) {
#if GEMV_NC
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#else
    return *p;
#endif
}

// One iteration's weight chunks (c0, c0 + 32, ...) of a row into registers (zeros from `end`).
__device__ __forceinline__ void load_batch(const uint4* row, int c0, int end, uint4* wv) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
        const int c = c0 + u * 32;
        wv[u] = c < end ? load_weights(row + c) : make_uint4(0, 0, 0, 0);
    }
}

__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
    const bf16_t* e = (const bf16_t*)&v;
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = bf2f(e[j]);
}

// The weights of one 16-byte chunk as floats: 8 bf16, or 16 E4M3 times 2^-120 (without the row
// scale).
template <bool FP8>
__device__ __forceinline__ void unpack_weights(const uint4& v, float* f) {
    if constexpr (FP8) unpack16_e4m3_scaled(v, f);
    else unpack8(v, f);
}

// One 16-byte weight chunk (chunk `c` of its row; `wv2`: the same chunk of the PAIR row) against
// the matching elements of each of the `rows` inputs, summed into acc (acc2).
template <int R, bool PAIR, bool FP8>
__device__ __forceinline__ void gemv_chunk(const bf16_t* __restrict__ x, int in, int rows, int c,
                                           const uint4& wv, const uint4& wv2, float* acc,
                                           float* acc2) {
    constexpr int PER = FP8 ? 16 : 8;
    float wf[PER], wf2[PER];
    unpack_weights<FP8>(wv, wf);
    if (PAIR) unpack_weights<FP8>(wv2, wf2);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            float xf[PER];
            const uint4* xc = (const uint4*)(x + (u64)r * in + (u64)c * PER);
            unpack8(xc[0], xf);
            if constexpr (FP8) unpack8(xc[1], xf + 8);
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                acc[r] += wf[j] * xf[j];
                if (PAIR) acc2[r] += wf2[j] * xf[j];
            }
        }
    }
}

// Output row `o` of each input row from the finished sums (the lane that holds them): the FP8 row
// scales applied, then written as `mode` says (PAIR: SwiGLU of the two sums).
template <int R, bool PAIR, bool FP8>
__device__ __forceinline__ void gemv_store(void* y, const float* __restrict__ scale, int o, int out,
                                           int rows, int mode, const float* acc,
                                           const float* acc2) {
    const float s1 = FP8 ? scale[o] * E4M3_UNPACK_RESTORE : 1.0f;
    const float s2 = FP8 && PAIR ? scale[o + out] * E4M3_UNPACK_RESTORE : 1.0f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            const float s = acc[r] * s1;
            const u64 at = (u64)r * out + o;
            if (PAIR) ((bf16_t*)y)[at] = f2bf(swiglu(s, acc2[r] * s2));
            else if (mode == 2) ((bf16_t*)y)[at] = f2bf(s);
            else if (mode == 1) ((float*)y)[at] += s;
            else ((float*)y)[at] = s;
        }
    }
}

template <int R, bool PAIR, bool FP8>
__device__ __forceinline__ void gemv(const bf16_t* __restrict__ x, const void* __restrict__ w,
                                     const float* __restrict__ scale, void* y, int rows, int out,
                                     int in, int mode, int ksplit) {
    constexpr int PER = FP8 ? 16 : 8;  // weights per 16-byte chunk
    constexpr int WIDTH = FP8 ? 1 : 2;  // bytes per weight
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int o = blockIdx.x * (8 / ksplit) + warp / ksplit, part = warp % ksplit;
    const bool live = o < out;
    const int chunks = in / PER, per_part = (chunks + ksplit - 1) / ksplit;
    const int begin = part * per_part, end = min(chunks, begin + per_part);
    const uint4* wrow = (const uint4*)((const unsigned char*)w + (u64)o * in * WIDTH);
    const uint4* wrow2 = (const uint4*)((const unsigned char*)w + (u64)(o + out) * in * WIDTH);
    uint4 wv[GEMV_UNROLL], wv2[GEMV_UNROLL];
    if (live) {
        load_batch(wrow, begin + lane, end, wv);
        if (PAIR) load_batch(wrow2, begin + lane, end, wv2);
    }
    pdl_trigger();
    pdl_wait();
    float acc[R], acc2[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = acc2[r] = 0.0f;
    for (int c0 = begin + lane; live && c0 < end; c0 += 32 * GEMV_UNROLL) {
        if (c0 != begin + lane) {
            load_batch(wrow, c0, end, wv);
            if (PAIR) load_batch(wrow2, c0, end, wv2);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32;
            if (c < end) gemv_chunk<R, PAIR, FP8>(x, in, rows, c, wv[u], wv2[u], acc, acc2);
        }
    }
    __shared__ float parts[2][8][R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        acc[r] = warp_sum(acc[r]);
        if (PAIR) acc2[r] = warp_sum(acc2[r]);
    }
    if (ksplit > 1) {
        if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; ++r) parts[0][warp][r] = acc[r], parts[1][warp][r] = acc2[r];
        }
        __syncthreads();
        if (part != 0) return;
        for (int p = 1; p < ksplit; ++p) {
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] += parts[0][warp + p][r], acc2[r] += parts[1][warp + p][r];
        }
    }
    if (live && lane == 0) gemv_store<R, PAIR, FP8>(y, scale, o, out, rows, mode, acc, acc2);
}

#define GEMV_ENTRY(R, PAIR)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) gemv_r##R##_p##PAIR(                           \
        const bf16_t* x, const bf16_t* w, void* y, int rows, int out, int in, int mode, int ksplit) { \
        gemv<R, PAIR, false>(x, w, nullptr, y, rows, out, in, mode, ksplit);                          \
    }
#define GEMV_FP8_ENTRY(R, PAIR)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_fp8_r##R##_p##PAIR(                       \
        const bf16_t* x, const unsigned char* w, const float* scale, void* y, int rows, int out,      \
        int in, int mode, int ksplit) {                                                              \
        gemv<R, PAIR, true>(x, w, scale, y, rows, out, in, mode, ksplit);                             \
    }
GEMV_ENTRY(1, 0)
GEMV_ENTRY(2, 0)
GEMV_ENTRY(4, 0)
GEMV_ENTRY(8, 0)
GEMV_ENTRY(1, 1)
GEMV_ENTRY(2, 1)
GEMV_ENTRY(4, 1)
GEMV_ENTRY(8, 1)
GEMV_FP8_ENTRY(1, 0)
GEMV_FP8_ENTRY(2, 0)
GEMV_FP8_ENTRY(4, 0)
GEMV_FP8_ENTRY(8, 0)
GEMV_FP8_ENTRY(1, 1)
GEMV_FP8_ENTRY(2, 1)
GEMV_FP8_ENTRY(4, 1)
GEMV_FP8_ENTRY(8, 1)

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMV (`gemv_mma_p*`, `gemv_mma_fp8_p*`) for 1–8 input rows: a warp takes 16 weight
// rows as the A operand of `mma.sync m16n8k16` (bf16, f32 accumulators) and the input rows as B
// (n = 8: one column per input row, zeros past `rows`), so each input value is read once per 16
// weight rows instead of once per weight row, and the multiply-adds run on the tensor cores.
// The reduction dimension is permuted alike in A and B (the sum does not care): lane (g, t) loads
// 16 contiguous bytes of weight rows g and g + 8 and of input row g, and hands their elements to
// the MMA's k positions (2t, 2t + 1, 2t + 8, 2t + 9), so every load is a 16-byte one. FP8 codes
// widen to bf16 (times 2^-120, as `unpack16_e4m3_scaled`) with integer ops, 16 per load, for
// four MMAs. Rows are split over `ksplit` warps of a block as in `gemv`; `in` a multiple of
// GEMV_MMA_K (32 bf16, 64 FP8). Grid: ceil(ceil(out / 16) · ksplit / 8); block 256.

#define GEMV_MMA_UNROLL 2

// Bf16 pairs of four E4M3 codes (a 32-bit word) times 2^-120: pair 0 = codes 0, 1; pair 1 = codes
// 2, 3 (the lower code in the lower half).
__device__ __forceinline__ void e4m3x4_to_bf16x2(unsigned word, unsigned& p0, unsigned& p1) {
    const unsigned lo = __byte_perm(word, 0, 0x1404), hi = __byte_perm(word, 0, 0x3424);
    p0 = (lo & 0x80008000u) | ((lo >> 4) & 0x07f007f0u);
    p1 = (hi & 0x80008000u) | ((hi >> 4) & 0x07f007f0u);
}

// The eight bf16 pairs of one 16-byte load: bf16 weights as they are, FP8 codes widened (the
// first eight codes; `second` picks codes 8..15 of the load).
template <bool FP8>
__device__ __forceinline__ void mma_pairs(const uint4& v, bool second, unsigned* p) {
    if constexpr (FP8) {
        const unsigned w0 = second ? v.z : v.x, w1 = second ? v.w : v.y;
        e4m3x4_to_bf16x2(w0, p[0], p[1]);
        e4m3x4_to_bf16x2(w1, p[2], p[3]);
    } else {
        p[0] = v.x, p[1] = v.y, p[2] = v.z, p[3] = v.w;
    }
}

// One output value of the MMA GEMV: row `o` of input row `r`.
template <bool PAIR, bool FP8>
__device__ __forceinline__ void mma_store(void* y, const float* __restrict__ scale, int o, int r,
                                          int out, int mode, float v, float v2) {
    const float s1 = FP8 ? scale[o] * E4M3_UNPACK_RESTORE : 1.0f;
    const float s2 = FP8 && PAIR ? scale[o + out] * E4M3_UNPACK_RESTORE : 1.0f;
    const u64 at = (u64)r * out + o;
    const float s = v * s1;
    if (PAIR) ((bf16_t*)y)[at] = f2bf(swiglu(s, v2 * s2));
    else if (mode == 2) ((bf16_t*)y)[at] = f2bf(s);
    else if (mode == 1) ((float*)y)[at] += s;
    else ((float*)y)[at] = s;
}

template <bool PAIR, bool FP8>
__device__ __forceinline__ void gemv_mma(const bf16_t* __restrict__ x, const void* __restrict__ w,
                                         const float* __restrict__ scale, void* y, int rows,
                                         int out, int in, int mode, int ksplit) {
    constexpr int STEP_K = FP8 ? 64 : 32;  // k per load of 16 bytes by each of a row's 4 lanes
    constexpr int WIDTH = FP8 ? 1 : 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x * (8 / ksplit) + warp / ksplit, part = warp % ksplit;
    const int o_lo = tile * 16 + g, o_hi = o_lo + 8;
    const bool live = tile * 16 < out, ok_lo = o_lo < out, ok_hi = o_hi < out, ok_x = g < rows;
    const int steps = in / STEP_K, per_part = (steps + ksplit - 1) / ksplit;
    const int begin = part * per_part, end = min(steps, begin + per_part);
    const unsigned char* wb = (const unsigned char*)w;
    const u64 row_bytes = (u64)in * WIDTH, pair_offset = (u64)out * row_bytes;
    const int lane_byte = t * 16;  // this lane's 16 bytes of each row's STEP_K values
    const uint4 zero = make_uint4(0, 0, 0, 0);
    auto wload = [&](bool ok, int o, int s, u64 extra) {
        return ok ? load_weights((const uint4*)(wb + extra + (u64)o * row_bytes +
                                                (u64)s * STEP_K * WIDTH + lane_byte))
                  : zero;
    };
    float c[4] = {0, 0, 0, 0}, c2[4] = {0, 0, 0, 0};
    uint4 lo[GEMV_MMA_UNROLL], hi[GEMV_MMA_UNROLL], lo2[GEMV_MMA_UNROLL], hi2[GEMV_MMA_UNROLL];
    auto issue = [&](int s0) {
#pragma unroll
        for (int u = 0; u < GEMV_MMA_UNROLL; ++u) {
            const int s = s0 + u;
            const bool in_range = live && s < end;
            lo[u] = wload(in_range && ok_lo, o_lo, s, 0);
            hi[u] = wload(in_range && ok_hi, o_hi, s, 0);
            if (PAIR) {
                lo2[u] = wload(in_range && ok_lo, o_lo, s, pair_offset);
                hi2[u] = wload(in_range && ok_hi, o_hi, s, pair_offset);
            }
        }
    };
    issue(begin);
    pdl_trigger();
    pdl_wait();
    for (int s0 = begin; live && s0 < end; s0 += GEMV_MMA_UNROLL) {
        uint4 a_lo[GEMV_MMA_UNROLL], a_hi[GEMV_MMA_UNROLL], b_lo[GEMV_MMA_UNROLL], b_hi[GEMV_MMA_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_MMA_UNROLL; ++u) {
            a_lo[u] = lo[u], a_hi[u] = hi[u];
            if (PAIR) b_lo[u] = lo2[u], b_hi[u] = hi2[u];
        }
        if (s0 + GEMV_MMA_UNROLL < end) issue(s0 + GEMV_MMA_UNROLL);
#pragma unroll
        for (int u = 0; u < GEMV_MMA_UNROLL; ++u) {
            const int s = s0 + u;
            if (s >= end) break;
            // The input's elements at this lane's k: 8 (bf16 weights) or 16 (FP8).
            const bf16_t* xr = x + (u64)g * in + (u64)s * STEP_K + t * (16 / WIDTH);
            uint4 xv[2] = {zero, zero};
            if (ok_x) {
                xv[0] = *(const uint4*)xr;
                if (FP8) xv[1] = *(const uint4*)(xr + 8);
            }
#pragma unroll
            for (int half = 0; half < (FP8 ? 2 : 1); ++half) {
                unsigned pl[4], ph[4], ql[4], qh[4];
                mma_pairs<FP8>(a_lo[u], half, pl);
                mma_pairs<FP8>(a_hi[u], half, ph);
                if (PAIR) mma_pairs<FP8>(b_lo[u], half, ql), mma_pairs<FP8>(b_hi[u], half, qh);
                const unsigned xp[4] = {xv[half].x, xv[half].y, xv[half].z, xv[half].w};
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const unsigned a[4] = {pl[2 * m], ph[2 * m], pl[2 * m + 1], ph[2 * m + 1]};
                    mma_bf16_16816(c, a, xp[2 * m], xp[2 * m + 1]);
                    if (PAIR) {
                        const unsigned a2[4] = {ql[2 * m], qh[2 * m], ql[2 * m + 1], qh[2 * m + 1]};
                        mma_bf16_16816(c2, a2, xp[2 * m], xp[2 * m + 1]);
                    }
                }
            }
        }
    }
    if (ksplit > 1) {
        __shared__ float parts[8][32][8];
#pragma unroll
        for (int i = 0; i < 4; ++i) parts[warp][lane][i] = c[i], parts[warp][lane][4 + i] = c2[i];
        __syncthreads();
        if (part != 0) return;
        for (int p = 1; p < ksplit; ++p) {
#pragma unroll
            for (int i = 0; i < 4; ++i) c[i] += parts[warp + p][lane][i], c2[i] += parts[warp + p][lane][4 + i];
        }
    }
    if (!live) return;
    // c0, c1: row o_lo of inputs 2t, 2t + 1; c2, c3: row o_hi of the same inputs.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int o = i < 2 ? o_lo : o_hi, r = 2 * t + (i & 1);
        if (o < out && r < rows) mma_store<PAIR, FP8>(y, scale, o, r, out, mode, c[i], c2[i]);
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_mma_p0(const bf16_t* x, const bf16_t* w, void* y,
                                                              int rows, int out, int in, int mode,
                                                              int ksplit) {
    gemv_mma<false, false>(x, w, nullptr, y, rows, out, in, mode, ksplit);
}
extern "C" __global__ void __launch_bounds__(256) gemv_mma_p1(const bf16_t* x, const bf16_t* w, void* y,
                                                              int rows, int out, int in, int mode,
                                                              int ksplit) {
    gemv_mma<true, false>(x, w, nullptr, y, rows, out, in, mode, ksplit);
}
extern "C" __global__ void __launch_bounds__(256) gemv_mma_fp8_p0(const bf16_t* x, const unsigned char* w,
                                                                  const float* scale, void* y, int rows,
                                                                  int out, int in, int mode, int ksplit) {
    gemv_mma<false, true>(x, w, scale, y, rows, out, in, mode, ksplit);
}
extern "C" __global__ void __launch_bounds__(256) gemv_mma_fp8_p1(const bf16_t* x, const unsigned char* w,
                                                                  const float* scale, void* y, int rows,
                                                                  int out, int in, int mode, int ksplit) {
    gemv_mma<true, true>(x, w, scale, y, rows, out, in, mode, ksplit);
}
