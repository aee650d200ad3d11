/* bf16 linear layers of the native CPU kernels (see common.h), for the few-row activations of
 * decode steps: y[M, O] = x[M, I] @ w[O, I]^T (+ bias), float32 accumulation.
 *
 * Blocks of 4 weight rows x 4 input rows keep 16 AVX512-BF16 accumulators in registers; the
 * weight block is read from memory once (prefetched two blocks ahead, so the stream never
 * waits) and reused from L1 by every block of input rows. At one to a few rows this streams
 * the weights near the memory bandwidth (2x oneDNN's GEMV here); at 32 rows it matches
 * oneDNN. Each output is one dot product summed in a fixed order, so a row's result does not
 * depend on the other rows of the batch (batch invariance). Without AVX512-BF16 the entry
 * point returns -1 and the caller keeps torch's matmul.
 */
#include "common.h"

#if HAVE_FAST_BF16

#define PREFETCH_BLOCKS 2

/* 4 weight rows x 4 input rows: 16 dot products of length `inputs` (a multiple of 32). */
static inline __attribute__((always_inline)) void block4x4(const uint16_t *const w[4],
                                                           const uint16_t *const x[4],
                                                           int inputs, __m128 out[4]) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int m = 0; m < 4; m++) acc[r][m] = _mm512_setzero_ps();
    for (int i = 0; i < inputs; i += 32) {
        __m512bh wv[4], xv[4];
        for (int r = 0; r < 4; r++) wv[r] = (__m512bh)_mm512_loadu_si512(w[r] + i);
        for (int m = 0; m < 4; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x[m] + i);
        for (int r = 0; r < 4; r++)
            for (int m = 0; m < 4; m++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv[r], xv[m]);
    }
    for (int m = 0; m < 4; m++) out[m] = reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m]);
}

/* Outputs [o0, o0 + 4) of every row (rows and outputs past the end repeat the last one). */
static void output_block(const uint16_t *x, int64_t x_stride, const uint16_t *w,
                         const uint16_t *bias, uint16_t *y, int64_t y_stride, int rows,
                         int outputs, int inputs, int o0) {
    const int valid = outputs - o0 < 4 ? outputs - o0 : 4;
    const uint16_t *wr[4];
    float b[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int r = 0; r < 4; r++) {
        const int o = o0 + (r < valid ? r : valid - 1);
        wr[r] = w + (int64_t)o * inputs;
        if (bias) b[r] = bf16_to_f32(bias[o]);
    }
    const __m128 b4 = _mm_loadu_ps(b);
    for (int m0 = 0; m0 < rows; m0 += 4) {
        const int count = rows - m0 < 4 ? rows - m0 : 4;
        const uint16_t *xr[4];
        for (int m = 0; m < 4; m++) xr[m] = x + (int64_t)(m0 + (m < count ? m : count - 1)) * x_stride;
        __m128 out[4];
        block4x4(wr, xr, inputs, out);
        for (int m = 0; m < count; m++) {
            uint16_t packed[8];
            _mm_storeu_si128((__m128i *)packed, (__m128i)_mm_cvtneps_pbh(_mm_add_ps(out[m], b4)));
            memcpy(y + (int64_t)(m0 + m) * y_stride + o0, packed, sizeof(uint16_t) * valid);
        }
    }
}

int linear_bf16(const uint16_t *x, int64_t x_stride, const uint16_t *w, const uint16_t *bias,
                uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                int num_threads) {
    if (inputs % 32 || rows <= 0 || outputs <= 0) return -1;
    const int blocks = (outputs + 3) / 4;
    const int64_t block_bytes = (int64_t)4 * inputs * sizeof(uint16_t);
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int ob = 0; ob < blocks; ob++) {
        if (ob + PREFETCH_BLOCKS < blocks - 1) { /* full blocks only: no read past w */
            const char *ahead = (const char *)(w + (int64_t)(ob + PREFETCH_BLOCKS) * 4 * inputs);
            for (int64_t offset = 0; offset < block_bytes; offset += 64)
                _mm_prefetch(ahead + offset, _MM_HINT_T0);
        }
        output_block(x, x_stride, w, bias, y, y_stride, rows, outputs, inputs, ob * 4);
    }
    return 0;
}

#else

int linear_bf16(const uint16_t *x, int64_t x_stride, const uint16_t *w, const uint16_t *bias,
                uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                int num_threads) {
    (void)x, (void)x_stride, (void)w, (void)bias, (void)y, (void)y_stride, (void)rows;
    (void)outputs, (void)inputs, (void)num_threads;
    return -1;
}

#endif

/* 1 when the AVX512-BF16 paths (fast bf16 attention, linear_bf16) are compiled in. */
int cpu_kernels_fast_bf16(void) { return HAVE_FAST_BF16; }
