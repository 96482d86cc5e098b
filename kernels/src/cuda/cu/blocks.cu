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

// The 6-bit scale and minimum of unit j (0..7) of a Q4_K super-block (ggml's get_scale_min_k4),
// from its twelve scale bytes: `byte(k)` is byte k of them.
template <typename Byte>
__device__ __forceinline__ void q4k_scale_min(Byte byte, int j, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(byte(j) & 63);
        *m = (float)(byte(j + 4) & 63);
    } else {
        *sc = (float)((byte(j + 4) & 15) | ((byte(j - 4) >> 6) << 4));
        *m = (float)((byte(j + 4) >> 4) | ((byte(j) >> 6) << 4));
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
    const float d = f16_to_f32((unsigned short)(head.x & 0xffff));
    const float dmin = f16_to_f32((unsigned short)(head.x >> 16));
    // Scale byte k is byte 4 + k of the head: picked from its words by value (a runtime index
    // into the head's bytes would put the head in local memory).
    const auto scale_byte = [&](int k) -> unsigned {
        const unsigned word = k < 4 ? head.y : (k < 8 ? head.z : head.w);
        return (word >> (8 * (k & 3))) & 0xffu;
    };
    const int unit = 2 * (part / 2);
    float sc_lo, m_lo, sc_hi, m_hi;
    q4k_scale_min(scale_byte, unit, &sc_lo, &m_lo);
    q4k_scale_min(scale_byte, unit + 1, &sc_hi, &m_hi);
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
        const auto scale_byte = [b](int k) -> unsigned { return b[4 + k]; };
        const int unit = 2 * (part / 2);
        float sc_lo, m_lo, sc_hi, m_hi;
        q4k_scale_min(scale_byte, unit, &sc_lo, &m_lo);
        q4k_scale_min(scale_byte, unit + 1, &sc_hi, &m_hi);
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

// Any GGUF block format the host reads, expanded to bf16 on the device (`blocks.rs`,
// `Kernels::expand_gguf`): what a GGUF's matrices become on the way to a bf16 or FP8 layer, so
// the blocks cross PCIe instead of bf16. A thread per unit of 32 weights, decoded as the host's
// `BlockKind::decode_unit` and `QuantMatrix::dequantize` decode it, with the same roundings (no
// FMA contraction: the expansion equals the host's bit for bit). `kind`: 0 Q4_0, 1 Q4_1, 2 Q5_0,
// 3 Q5_1, 4 Q8_0, 5 Q4_K, 6 Q5_K, 7 Q6_K (`kind_code` in blocks.rs); `block_bytes` and
// `block_units` are the format's (host's `BlockKind`); `units` = out × in / 32.
__device__ __forceinline__ float gguf_f16(const unsigned char* p) {
    return f16_to_f32((unsigned short)(p[0] | (p[1] << 8)));
}

extern "C" __global__ void dequantize_gguf_units(const unsigned char* blocks, bf16_t* w, int kind,
                                                 int block_bytes, int block_units, long long units) {
    pdl_enter();
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < units;
         u += (long long)gridDim.x * blockDim.x) {
        const unsigned char* b = blocks + (u / block_units) * block_bytes;
        const int j = (int)(u % block_units);
        float v[32];
        float first, last, constant = 0.0f;
        if (kind <= 1) {  // Q4_0, Q4_1
            const float d = gguf_f16(b);
            const unsigned char* qs = b + block_bytes - 16;
#pragma unroll
            for (int l = 0; l < 16; ++l) v[l] = (float)(qs[l] & 15), v[l + 16] = (float)(qs[l] >> 4);
            first = last = d;
            constant = kind == 1 ? gguf_f16(b + 2) : -8.0f * d;
        } else if (kind <= 3) {  // Q5_0, Q5_1
            const float d = gguf_f16(b);
            const int at = kind == 3 ? 4 : 2;
            const unsigned qh = b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | ((unsigned)b[at + 3] << 24);
            const unsigned char* qs = b + at + 4;
#pragma unroll
            for (int l = 0; l < 16; ++l) {
                v[l] = (float)((qs[l] & 15) | (((qh >> l) << 4) & 0x10));
                v[l + 16] = (float)((qs[l] >> 4) | ((qh >> (l + 12)) & 0x10));
            }
            first = last = d;
            constant = kind == 3 ? gguf_f16(b + 2) : -16.0f * d;
        } else if (kind == 4) {  // Q8_0
            first = last = gguf_f16(b);
#pragma unroll
            for (int l = 0; l < 32; ++l) v[l] = (float)(signed char)b[2 + l];
        } else if (kind <= 6) {  // Q4_K, Q5_K
            const float d = gguf_f16(b), dmin = gguf_f16(b + 2);
            float sc, m;
            q4k_scale_min([b](int k) -> unsigned { return b[4 + k]; }, j, &sc, &m);
            first = last = __fmul_rn(d, sc);
            constant = -__fmul_rn(dmin, m);
            const int pair = j / 2, shift = 4 * (j % 2);
            if (kind == 6) {
                const unsigned char* qh = b + 16;
                const unsigned char* q = b + 48 + 32 * pair;
#pragma unroll
                for (int l = 0; l < 32; ++l) v[l] = (float)(((q[l] >> shift) & 15) | (((qh[l] >> j) & 1) << 4));
            } else {
                const unsigned char* q = b + 16 + 32 * pair;
#pragma unroll
                for (int l = 0; l < 32; ++l) v[l] = (float)((q[l] >> shift) & 15);
            }
        } else {  // Q6_K: two halves of 128 weights, unit k of a half from ql, qh bits 2k, two scales
            const float d = gguf_f16(b + 208);
            const int half = j / 4, k = j % 4;
            const unsigned char* ql = b + 64 * half + 32 * (k % 2);
            const unsigned char* qh = b + 128 + 32 * half;
            const signed char* scales = (const signed char*)(b + 192 + 8 * half + 2 * k);
            first = __fmul_rn(d, (float)scales[0]);
            last = __fmul_rn(d, (float)scales[1]);
            const int shift = 4 * (k / 2);
#pragma unroll
            for (int l = 0; l < 32; ++l)
                v[l] = (float)(((ql[l] >> shift) & 15) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32.0f;
        }
        unsigned packed[16];
#pragma unroll
        for (int l = 0; l < 16; ++l) {
            const float s = l < 8 ? first : last;
            packed[l] = pack_bf2(__fadd_rn(__fmul_rn(s, v[2 * l]), constant),
                                 __fadd_rn(__fmul_rn(s, v[2 * l + 1]), constant));
        }
        uint4* out = (uint4*)(w + u * 32);
#pragma unroll
        for (int q = 0; q < 4; ++q)
            out[q] = make_uint4(packed[4 * q], packed[4 * q + 1], packed[4 * q + 2], packed[4 * q + 3]);
    }
}
