// FP8 (E4M3) weights with one f32 scale per output row (per-output-channel, as vLLM's
// `--quantization fp8` makes them): w[o, i] ≈ scale[o] · e4m3(q[o, i]). Conversions use the
// Hopper cvt instructions (sm_89 and later); a pair of E4M3 bytes converts at once, the byte at
// the lower address into the lower half.

// Largest finite E4M3 value: a row's largest magnitude maps onto it.
#define E4M3_MAX 448.0f

// Two floats as E4M3 (lo into the lower byte), rounded to nearest even, saturated to ±448.
__device__ __forceinline__ unsigned short f32_to_e4m3x2(float lo, float hi) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(hi), "f"(lo));
    return pair;
}

// 2^120: the factor `unpack16_e4m3_scaled` leaves out of each value (it goes into the row's
// scale, applied once per output).
#define E4M3_UNPACK_RESTORE 1.329227995784916e36f

// Sixteen E4M3 values of a 16-byte load as floats times 2^-120, in memory order, with integer
// ops only (the cvt path costs 1.5 conversions per value, and conversions issue at a quarter of
// the integer rate, which left the batch-1 GEMV compute-bound). Each code `s eeee mmm` becomes
// the bf16 `s 0000eeee mmm0000`: 2^(e - 127) · 1.mmm for e > 0 and 0.mmm · 2^-126 for e = 0, i.e.
// the code's value (2^(e - 7) · 1.mmm, or 0.mmm · 2^-6) times 2^-120, subnormals included; the
// bf16 then widens to f32 by its position. NaN codes (never made by the quantizer) are not kept.
__device__ __forceinline__ void unpack16_e4m3_scaled(const uint4& v, float* f) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            // Bytes 2 half and 2 half + 1 at the top of each 16-bit half.
            const unsigned top = __byte_perm(words[j], 0, half ? 0x3424 : 0x1404);
            const unsigned bf = (top & 0x80008000u) | ((top >> 4) & 0x07f007f0u);
            f[4 * j + 2 * half] = __uint_as_float(bf << 16);
            f[4 * j + 2 * half + 1] = __uint_as_float(bf & 0xffff0000u);
        }
    }
}

// q[o, :] = e4m3(w[o, :] / scale[o]), scale[o] = max|w[o, :]| / 448 (1 for a zero row).
// `in` even. Grid: out rows; block: 256.
extern "C" __global__ void quantize_fp8_rows(const bf16_t* w, unsigned char* q, float* scale, int in) {
    pdl_enter();
    const bf16_t* row = w + (u64)blockIdx.x * in;
    float largest = 0.0f;
    for (int i = threadIdx.x; i < in; i += blockDim.x) largest = fmaxf(largest, fabsf(bf2f(row[i])));
    largest = block_max(largest);
    const float s = largest > 0.0f ? largest / E4M3_MAX : 1.0f;
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
    const float inv = 1.0f / s;
    unsigned short* out = (unsigned short*)(q + (u64)blockIdx.x * in);
    for (int i = threadIdx.x; i < in / 2; i += blockDim.x)
        out[i] = f32_to_e4m3x2(bf2f(row[2 * i]) * inv, bf2f(row[2 * i + 1]) * inv);
}

// w[o, :] = bf16(scale[o] · e4m3(q[o, :])): the dense matrix a GEMM of many rows reads. `in` a
// multiple of 16. Grid-stride over 16-byte chunks; block: 256.
extern "C" __global__ void dequantize_fp8_rows(const unsigned char* q, const float* scale, bf16_t* w,
                                               int out, int in) {
    pdl_enter();
    const u64 chunks = (u64)out * (in / 16);
    for (u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (u64)gridDim.x * blockDim.x) {
        const float s = scale[c * 16 / in] * E4M3_UNPACK_RESTORE;
        float f[16];
        unpack16_e4m3_scaled(((const uint4*)q)[c], f);
        uint4 lo, hi;
        lo.x = pack_bf2(f[0] * s, f[1] * s), lo.y = pack_bf2(f[2] * s, f[3] * s);
        lo.z = pack_bf2(f[4] * s, f[5] * s), lo.w = pack_bf2(f[6] * s, f[7] * s);
        hi.x = pack_bf2(f[8] * s, f[9] * s), hi.y = pack_bf2(f[10] * s, f[11] * s);
        hi.z = pack_bf2(f[12] * s, f[13] * s), hi.w = pack_bf2(f[14] * s, f[15] * s);
        ((uint4*)w)[2 * c] = lo;
        ((uint4*)w)[2 * c + 1] = hi;
    }
}
