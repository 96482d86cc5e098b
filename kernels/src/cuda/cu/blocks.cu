// GGUF's block-quantized weights kept on the device as the file stores them (`blocks.rs`):
// Q8_0 as its codes `[out, in]` int8 with one f16 scale per 32 (`scales [out, in / 32]`, split
// from the 34-byte blocks at upload), Q4_K as its 144-byte super-blocks of 256 weights (d, dmin,
// twelve bytes of 6-bit scales and minimums, 128 bytes of nibbles; ggml's layout). A GEMV for a
// few rows reads them directly (y[r, o] = x[r, :] · W[o, :], bf16 x, fp32 sums, modes as
// gemv.cu's: 0 y f32, 1 y f32 +=, 2 y bf16, 3 PAIR SwiGLU of a stacked [gate; up]); products of
// more rows run cuBLAS on the bf16 expansion the `dequantize_*` kernels write.
// GEMV grid: ceil(out / 8) blocks of 256 threads, a warp per output row.

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

// Eight bf16 of x from a 16-byte-aligned address.
__device__ __forceinline__ void x8(const bf16_t* p, float* f) {
    const uint4 v = *(const uint4*)p;
    const bf16_t* e = (const bf16_t*)&v;
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = bf2f(e[j]);
}

// The 6-bit scale and minimum of unit j (0..7) of a Q4_K super-block (ggml's get_scale_min_k4).
__device__ __forceinline__ void q4k_scale_min(const unsigned char* s, int j, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// Lane `part` (0..7) of a Q4_K super-block: its 16 bytes of nibbles `q` are weights
// 64 (part / 2) + 16 (part % 2) + l (low nibbles, unit 2 (part / 2)) and 32 more (high nibbles,
// the next unit), l < 16. Adds each row's dot product with them to acc[r].
template <int R>
__device__ __forceinline__ void q4k_part(const unsigned char* sb, int part, const bf16_t* x, int in,
                                         int rows, int col, float* acc) {
    const uint4 head = *(const uint4*)sb;
    const uint4 qv = *(const uint4*)(sb + 16 + 16 * part);
    const unsigned short* hw = (const unsigned short*)&head;
    const float d = f16_to_f32(hw[0]), dmin = f16_to_f32(hw[1]);
    const unsigned char* scales = (const unsigned char*)&head + 4;
    const int unit = 2 * (part / 2);
    float sc_lo, m_lo, sc_hi, m_hi;
    q4k_scale_min(scales, unit, &sc_lo, &m_lo);
    q4k_scale_min(scales, unit + 1, &sc_hi, &m_hi);
    const unsigned char* q = (const unsigned char*)&qv;
    float lo[16], hi[16];
#pragma unroll
    for (int l = 0; l < 16; ++l) lo[l] = (float)(q[l] & 15), hi[l] = (float)(q[l] >> 4);
    const int first = col + 64 * (part / 2) + 16 * (part % 2);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            float xl[16], xh[16];
            const bf16_t* xr = x + (u64)r * in + first;
            x8(xr, xl), x8(xr + 8, xl + 8), x8(xr + 32, xh), x8(xr + 40, xh + 8);
            float dot_lo = 0.0f, sum_lo = 0.0f, dot_hi = 0.0f, sum_hi = 0.0f;
#pragma unroll
            for (int l = 0; l < 16; ++l) {
                dot_lo += lo[l] * xl[l], sum_lo += xl[l];
                dot_hi += hi[l] * xh[l], sum_hi += xh[l];
            }
            acc[r] += d * (sc_lo * dot_lo + sc_hi * dot_hi) - dmin * (m_lo * sum_lo + m_hi * sum_hi);
        }
    }
}

// Block `b` of a Q8_0 row (32 codes at `codes`, scale `s`) against each row of x.
template <int R>
__device__ __forceinline__ void q8_block(const signed char* codes, float s, const bf16_t* x, int in,
                                         int rows, int col, float* acc) {
    const uint4 c0 = *(const uint4*)codes, c1 = *(const uint4*)(codes + 16);
    const signed char* c[2] = {(const signed char*)&c0, (const signed char*)&c1};
    float w[32];
#pragma unroll
    for (int j = 0; j < 16; ++j) w[j] = (float)c[0][j], w[j + 16] = (float)c[1][j];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            float xf[32];
            const bf16_t* xr = x + (u64)r * in + col;
            x8(xr, xf), x8(xr + 8, xf + 8), x8(xr + 16, xf + 16), x8(xr + 24, xf + 24);
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < 32; ++j) dot += w[j] * xf[j];
            acc[r] += s * dot;
        }
    }
}

// The sums of one weight row `o` (FMT 0: Q8_0, 1: Q4_K) over the warp's lanes into acc.
template <int FMT, int R>
__device__ __forceinline__ void blocks_row(const unsigned char* w, const unsigned short* scales,
                                           const bf16_t* x, int rows, int o, int in, int lane,
                                           float* acc) {
    if (FMT == 0) {
        const int nb = in / 32;
        const signed char* row = (const signed char*)w + (u64)o * in;
        for (int b = lane; b < nb; b += 32)
            q8_block<R>(row + 32 * b, f16_to_f32(scales[(u64)o * nb + b]), x, in, rows, 32 * b, acc);
    } else {
        const int nsb = in / 256;
        const unsigned char* row = w + (u64)o * nsb * 144;
        for (int i = lane; i < 8 * nsb; i += 32)
            q4k_part<R>(row + 144 * (i / 8), i % 8, x, in, rows, 256 * (i / 8), acc);
    }
}

template <int FMT, int R, bool PAIR>
__device__ __forceinline__ void gemv_blocks(const bf16_t* __restrict__ x,
                                            const unsigned char* __restrict__ w,
                                            const unsigned short* __restrict__ scales, void* y,
                                            int rows, int out, int in, int mode) {
    pdl_enter();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int o = blockIdx.x * 8 + warp;
    if (o >= out) return;
    float acc[R], acc2[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = acc2[r] = 0.0f;
    blocks_row<FMT, R>(w, scales, x, rows, o, in, lane, acc);
    if (PAIR) blocks_row<FMT, R>(w, scales, x, rows, o + out, in, lane, acc2);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        acc[r] = warp_sum(acc[r]);
        if (PAIR) acc2[r] = warp_sum(acc2[r]);
    }
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            const u64 at = (u64)r * out + o;
            if (PAIR) ((bf16_t*)y)[at] = f2bf(swiglu(acc[r], acc2[r]));
            else if (mode == 2) ((bf16_t*)y)[at] = f2bf(acc[r]);
            else if (mode == 1) ((float*)y)[at] += acc[r];
            else ((float*)y)[at] = acc[r];
        }
    }
}

#define GEMV_BLOCKS_ENTRY(NAME, FMT, R, PAIR)                                                         \
    extern "C" __global__ void __launch_bounds__(256) NAME##_r##R##_p##PAIR(                          \
        const bf16_t* x, const unsigned char* w, const unsigned short* scales, void* y, int rows,     \
        int out, int in, int mode) {                                                                 \
        gemv_blocks<FMT, R, PAIR>(x, w, scales, y, rows, out, in, mode);                              \
    }
#define GEMV_BLOCKS_FAMILY(NAME, FMT)                                                                 \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 1, 0)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 2, 0)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 4, 0)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 8, 0)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 1, 1)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 2, 1)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 4, 1)                                                                \
    GEMV_BLOCKS_ENTRY(NAME, FMT, 8, 1)
GEMV_BLOCKS_FAMILY(gemv_q8_0, 0)
GEMV_BLOCKS_FAMILY(gemv_q4_k, 1)

// w[o, i] = bf16(scale · code) of a Q8_0 matrix. Grid-stride over 16-code chunks; block 256.
extern "C" __global__ void dequantize_q8_0_rows(const signed char* codes, const unsigned short* scales,
                                                bf16_t* w, int out, int in) {
    pdl_enter();
    const u64 chunks = (u64)out * (in / 16);
    for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (u64)gridDim.x * blockDim.x) {
        const float s = f16_to_f32(scales[c / 2]);
        const uint4 v = ((const uint4*)codes)[c];
        const signed char* q = (const signed char*)&v;
        uint4 lo, hi;
        unsigned* l = (unsigned*)&lo;
        unsigned* h = (unsigned*)&hi;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            l[j] = pack_bf2(s * q[2 * j], s * q[2 * j + 1]);
            h[j] = pack_bf2(s * q[8 + 2 * j], s * q[8 + 2 * j + 1]);
        }
        ((uint4*)w)[2 * c] = lo;
        ((uint4*)w)[2 * c + 1] = hi;
    }
}

// w[o, :] of a Q4_K matrix as bf16: each thread one 16-byte part of a super-block (32 weights:
// 16 low nibbles of one unit, 16 high nibbles of the next). Grid-stride; block 256.
extern "C" __global__ void dequantize_q4_k_rows(const unsigned char* blocks, bf16_t* w, int out, int in) {
    pdl_enter();
    const u64 parts = (u64)out * (in / 256) * 8;
    for (u64 p = (u64)blockIdx.x * blockDim.x + threadIdx.x; p < parts; p += (u64)gridDim.x * blockDim.x) {
        const u64 sb = p / 8;
        const int part = (int)(p % 8);
        const unsigned char* b = blocks + sb * 144;
        const unsigned short* hw = (const unsigned short*)b;
        const float d = f16_to_f32(hw[0]), dmin = f16_to_f32(hw[1]);
        const int unit = 2 * (part / 2);
        float sc_lo, m_lo, sc_hi, m_hi;
        q4k_scale_min(b + 4, unit, &sc_lo, &m_lo);
        q4k_scale_min(b + 4, unit + 1, &sc_hi, &m_hi);
        const uint4 qv = *(const uint4*)(b + 16 + 16 * part);
        const unsigned char* q = (const unsigned char*)&qv;
        // Super-block `sb` starts at weight 256 sb of the matrix (rows are whole super-blocks).
        bf16_t* lo = w + sb * 256 + 64 * (part / 2) + 16 * (part % 2);
        bf16_t* hi = lo + 32;
        uint4 out_lo[2], out_hi[2];
        unsigned* ol = (unsigned*)out_lo;
        unsigned* oh = (unsigned*)out_hi;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            ol[j] = pack_bf2(d * sc_lo * (q[2 * j] & 15) - dmin * m_lo,
                             d * sc_lo * (q[2 * j + 1] & 15) - dmin * m_lo);
            oh[j] = pack_bf2(d * sc_hi * (q[2 * j] >> 4) - dmin * m_hi,
                             d * sc_hi * (q[2 * j + 1] >> 4) - dmin * m_hi);
        }
        ((uint4*)lo)[0] = out_lo[0], ((uint4*)lo)[1] = out_lo[1];
        ((uint4*)hi)[0] = out_hi[0], ((uint4*)hi)[1] = out_hi[1];
    }
}
