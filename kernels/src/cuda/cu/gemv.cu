// Matrix-vector products for decode batches of a few rows: y[r, o] = x[r, :] · W[o, :] for
// r < rows <= R, bf16 x and W (W row-major [out, in], in a multiple of 8), fp32 accumulation.
// cuBLAS's GEMMs leave bandwidth unused at one to eight rows; here each warp streams one
// weight row with 16-byte loads, UNROLL of them in flight per lane, and x stays in L1.
// mode: 0 y f32 = result, 1 y f32 += result, 2 y bf16 = result. Grid: ceil(out / 8); block 256.

// Build-time knobs (the benchmark sweeps them with `Kernels::load_with`): loads in flight per
// lane, and whether weights bypass L1 (streamed once: `ld.global.nc.L1::no_allocate`).
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4
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

template <int R>
__device__ __forceinline__ void gemv(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                     void* y, int rows, int out, int in, int mode) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int o = blockIdx.x * 8 + warp;
    if (o >= out) return;
    const uint4* wrow = (const uint4*)(w + (u64)o * in);
    const int chunks = in / 8;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    for (int c0 = lane; c0 < chunks; c0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32;
            wv[u] = c < chunks ? load_weights(wrow + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32;
            if (c < chunks) {
                const bf16_t* we = (const bf16_t*)&wv[u];
                float wf[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) wf[j] = bf2f(we[j]);
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    if (r < rows) {
                        uint4 xv = *(const uint4*)(x + (u64)r * in + (u64)c * 8);
                        const bf16_t* xe = (const bf16_t*)&xv;
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[r] += wf[j] * bf2f(xe[j]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < rows) {
            float s = warp_sum(acc[r]);
            if (lane == 0) {
                u64 at = (u64)r * out + o;
                if (mode == 2) ((bf16_t*)y)[at] = f2bf(s);
                else if (mode == 1) ((float*)y)[at] += s;
                else ((float*)y)[at] = s;
            }
        }
    }
}

#define GEMV_ENTRY(R)                                                                                \
    extern "C" __global__ void __launch_bounds__(256) gemv_r##R(                                     \
        const bf16_t* x, const bf16_t* w, void* y, int rows, int out, int in, int mode) {            \
        gemv<R>(x, w, y, rows, out, in, mode);                                                       \
    }
GEMV_ENTRY(1)
GEMV_ENTRY(2)
GEMV_ENTRY(4)
GEMV_ENTRY(8)
