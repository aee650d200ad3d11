/* Shared by the native CPU kernels (attention.c, elementwise.c, linear.c): bf16 <-> float32,
 * a vectorizable exp, and the AVX-512 helpers of the fast paths. Built by device/cpu_native.py;
 * every entry point returns 0, or a negative status the Python side turns into an error.
 */
#ifndef TGI_CPU_KERNELS_COMMON_H
#define TGI_CPU_KERNELS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD_DIM 256
#define MAX_HEADS 256
#define MAX_ROW 16384 /* heads * head_dim, or a norm's hidden size */

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even, as torch does */
    return (uint16_t)(u >> 16);
}

/* exp(x) with Cephes' expf polynomial (relative error < 2e-7), clamped to [-87, 88]; float
 * and integer ops only, so loops over it vectorize. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = nearbyintf(x * 1.44269504088896341f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^n in two factors: n + 127 may leave the normal range at the clamp bounds. */
    const int32_t half = (int32_t)n / 2;
    const int32_t bits_a = (half + 127) << 23, bits_b = ((int32_t)n - half + 127) << 23;
    float a, b;
    memcpy(&a, &bits_a, sizeof a);
    memcpy(&b, &bits_b, sizeof b);
    return p * a * b;
}

static inline __attribute__((always_inline)) float load_at(const void *p, int64_t i, int is_bf16) {
    return is_bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline __attribute__((always_inline)) void store_at(void *p, int64_t i, float v,
                                                           int is_bf16) {
    if (is_bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* The bf16 entry points layer.c chains (defined in elementwise.c, linear.c, attention.c). */
int rms_norm_bf16(const void *x, int64_t x_stride, void *residual, const void *weight, void *out,
                  int rows, int hidden, float eps, int num_threads);
int silu_mul_bf16(const void *x, void *out, int rows, int inter, int num_threads);
int rotary_bf16(void *x, int64_t x_stride, const void *cos, const void *sin, int rows, int heads,
                int head_dim, int num_threads);
int linear_bf16(const uint16_t *x, int64_t x_stride, const uint16_t *w, const uint16_t *bias,
                uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                int num_threads);
int paged_attention_bf16(const void *q, int64_t q_stride, const void *new_k, int64_t new_k_stride,
                         const void *new_v, int64_t new_v_stride, const int64_t *slots,
                         int64_t new_rows, void *k_cache, void *v_cache, const int32_t *tables,
                         int64_t table_stride, const int32_t *seq_lens,
                         const int32_t *query_starts, const int32_t *query_lens, void *out, int n,
                         int heads, int kv_heads, int head_dim, int block_size, int window,
                         float scale, float softcap, int num_threads);

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_FAST_BF16 1

/* exp(x) for x <= 0 on 16 lanes: the same polynomial as exp_approx. */
static inline __m512 exp16_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 bf16x16_to_f32(const uint16_t *src) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline __mmask16 tail_mask(int remaining) {
    return remaining >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << remaining) - 1u);
}

/* Horizontal sums of four vectors at once: [sum(a0), sum(a1), sum(a2), sum(a3)]. */
static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512d d0 = _mm512_castps_pd(t0), d1 = _mm512_castps_pd(t1);
    const __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)));
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
    return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

#else
#define HAVE_FAST_BF16 0
#endif

#endif
