// The CUDA thread model on the CPU, for compiling the kernels of cuda/ as C++.
//
// Each block runs as cooperating fibers on the calling thread, one per CUDA thread, that
// switch only at barriers: __syncthreads waits for the whole block, a warp shuffle for its
// 32 lanes. Shared memory is one per-OS-thread static per declaration (blocks run one
// after another). Plain read-modify-write is atomic here, since fibers never switch
// inside it. See crates/tessera-cuda-emu/src/lib.rs for what is not covered.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TESSERA_EMU 1
#define __global__
#define __device__ static
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3 {
    unsigned int x, y, z;
};
extern "C" {
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
void emu_syncthreads(void);
void emu_syncwarp(void);
// Every lane of the warp posts `bits`; each gets back lane `src`'s (full warps only).
uint64_t emu_shfl(unsigned int mask, uint64_t bits, int src);
// Every lane posts a predicate; each gets the warp's ballot.
unsigned int emu_ballot(unsigned int mask, int pred);
}
#define __syncthreads() emu_syncthreads()
#define __syncwarp(...) emu_syncwarp()
static const int warpSize = 32;

template <typename T>
static inline T emu_shfl_t(unsigned int mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = emu_shfl(mask, bits, src);
    memcpy(&v, &bits, sizeof(T));
    return v;
}
static inline int emu_lane(void) { return (int)(threadIdx.x & 31u); }
template <typename T>
static inline T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
    (void)width;
    return emu_shfl_t(mask, v, src & 31);
}
template <typename T>
static inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
    (void)width;
    return emu_shfl_t(mask, v, (emu_lane() ^ lane_mask) & 31);
}
template <typename T>
static inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    (void)width;
    int src = emu_lane() + (int)delta;
    return emu_shfl_t(mask, v, src < 32 ? src : emu_lane());
}
template <typename T>
static inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
    (void)width;
    int src = emu_lane() - (int)delta;
    return emu_shfl_t(mask, v, src >= 0 ? src : emu_lane());
}
static inline unsigned int __ballot_sync(unsigned int mask, int pred) { return emu_ballot(mask, pred); }
static inline int __any_sync(unsigned int mask, int pred) { return emu_ballot(mask, pred) != 0; }
static inline int __all_sync(unsigned int mask, int pred) { return emu_ballot(mask, pred) == mask; }

// Atomics: fibers switch only at barriers, so a plain update is atomic.
template <typename T>
static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T>
static inline T atomicMax(T* p, T v) { T old = *p; *p = old > v ? old : v; return old; }
template <typename T>
static inline T atomicMin(T* p, T v) { T old = *p; *p = old < v ? old : v; return old; }
template <typename T>
static inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T>
static inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

// Integer min/max as CUDA overloads them.
#define EMU_MINMAX(T) \
    static inline T min(T a, T b) { return a < b ? a : b; } \
    static inline T max(T a, T b) { return a > b ? a : b; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned int)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX

// Fast-math intrinsics: the precise functions (the device's are within a few ulp).
// (Macros: glibc declares functions of these names.)
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }

// IEEE half <-> f32 in software (round to nearest even), as the device's cvt.
static inline float emu_f16_to_f32(unsigned short h) {
    unsigned int sign = (unsigned int)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) return (sign ? -1.0f : 1.0f) * ldexpf((float)man, -24);
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}
static inline unsigned short emu_f32_to_f16(float f) {
    unsigned int u = __float_as_uint(f), sign = (u >> 16) & 0x8000u;
    float a = fabsf(f);
    if (a != a) return (unsigned short)(sign | 0x7e00u);
    if (a >= 65520.0f) return (unsigned short)(sign | 0x7c00u);
    if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, nearest even
        return (unsigned short)(sign | (unsigned int)nearbyintf(a * 16777216.0f));
    }
    unsigned int au = __float_as_uint(a);
    unsigned int r = au + 0xfffu + ((au >> 13) & 1u);  // round the 13 dropped bits
    return (unsigned short)(sign | ((r - (112u << 23)) >> 13));
}
