/* Weight-only quantized linear layers of the native CPU kernels (see common.h), for the
 * few-row activations of decode steps: y[M, O] = x[M, I] @ dequant(w)[O, I]^T (+ bias), float32
 * activations and accumulation.
 *
 * Two weight layouts (``layers/quantized.py`` makes them):
 *   int8: one signed byte per weight, [O, I], and one scale per group of `group` weights (a
 *         multiple of 32; `group` = I is one scale per output row): w = q * scale.
 *   int4: two weights per byte, [O, I / 2], in blocks of 32 weights (16 bytes) laid out as
 *         llama.cpp's Q4_0/Q4_1 blocks: byte j holds weight j in its low nibble and weight
 *         j + 16 in its high one; one (scale, min) pair per group of `group` weights (a
 *         multiple of 32) of a row: w = q * scale + min, q in [0, 15].
 * One input row (single-stream decode): four weight rows are dequantized in registers and
 * dotted with it. More rows: four weight rows are dequantized to float32 at a time into an L1
 * buffer (each weight read from memory once) and dotted with every input row from L1/L2; 16 independent lanes per dot product so the
 * compiler vectorizes them for whatever -march=native offers (AVX2 or AVX-512), and each
 * output is summed in a fixed order whatever the batch (batch invariance). Plain C: one
 * source serves every x86 (and other) CPU the library is built on.
 *
 * dequantize_*_f32 write the dense float32 matrix instead, for prefill steps, where a BLAS
 * GEMM on the dequantized weights beats dotting row by row; dequantize_*_bf16 the same matrix
 * rounded to bf16, for the bf16 GEMM of prefill-sized bf16 batches.
 */
#include "common.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define ROWS_PER_BLOCK 4
#define MAX_INPUTS 32768 /* the widest input row (a 70B model's intermediate size fits) */

#if defined(__AVX512F__)
#include <immintrin.h>
#define VEC 16
#define M_BLOCK 4 /* 4 weight rows x 4 input rows: 16 of the 32 vector registers accumulate */
typedef __m512 vec_t;
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vmul(a, b) _mm512_mul_ps(a, b)
#define vadd(a, b) _mm512_add_ps(a, b)
#define vset1(x) _mm512_set1_ps(x)
static inline vec_t bytes_to_vec(const uint8_t *b) { /* 16 unsigned bytes -> 16 floats */
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b)));
}
static inline vec_t sbytes_to_vec(const int8_t *b) { /* 16 signed bytes -> 16 floats */
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b)));
}
static inline float vsum(vec_t v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VEC 8
#define M_BLOCK 2 /* 4 x 2 accumulators: 8 of the 16 vector registers */
typedef __m256 vec_t;
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vmul(a, b) _mm256_mul_ps(a, b)
#define vadd(a, b) _mm256_add_ps(a, b)
#define vset1(x) _mm256_set1_ps(x)
static inline vec_t bytes_to_vec(const uint8_t *b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b)));
}
static inline vec_t sbytes_to_vec(const int8_t *b) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)b)));
}
static inline float vsum(vec_t v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else /* any other CPU: the compiler's own vectorization of 8-lane arrays */
#define VEC 8
#define M_BLOCK 1
typedef struct { float v[VEC]; } vec_t;
static inline vec_t vzero(void) { vec_t r = {{0}}; return r; }
static inline vec_t vload(const float *p) { vec_t r; memcpy(r.v, p, sizeof r.v); return r; }
static inline void vstore(float *p, vec_t v) { memcpy(p, v.v, sizeof v.v); }
static inline vec_t vfma(vec_t a, vec_t b, vec_t c) {
    for (int l = 0; l < VEC; l++) c.v[l] += a.v[l] * b.v[l];
    return c;
}
static inline vec_t vadd(vec_t a, vec_t b) {
    for (int l = 0; l < VEC; l++) a.v[l] += b.v[l];
    return a;
}
static inline vec_t vmul(vec_t a, vec_t b) {
    for (int l = 0; l < VEC; l++) a.v[l] *= b.v[l];
    return a;
}
static inline vec_t vset1(float x) { vec_t r; for (int l = 0; l < VEC; l++) r.v[l] = x; return r; }
static inline vec_t bytes_to_vec(const uint8_t *b) {
    vec_t r; for (int l = 0; l < VEC; l++) r.v[l] = (float)b[l]; return r;
}
static inline vec_t sbytes_to_vec(const int8_t *b) {
    vec_t r; for (int l = 0; l < VEC; l++) r.v[l] = (float)b[l]; return r;
}
static inline float vsum(vec_t v) { float s = 0; for (int l = 0; l < VEC; l++) s += v.v[l]; return s; }
#endif

/* 16 bytes of a block -> its 32 codes in order (low nibbles, then high nibbles). */
static inline __attribute__((always_inline)) void split_nibbles(const uint8_t *qs,
                                                                uint8_t codes[32]) {
#if defined(__SSE2__)
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
    _mm_storeu_si128((__m128i *)codes, _mm_and_si128(b, low4));
    _mm_storeu_si128((__m128i *)(codes + 16), _mm_and_si128(_mm_srli_epi16(b, 4), low4));
#else
    for (int j = 0; j < 16; j++) {
        codes[j] = qs[j] & 0x0f;
        codes[j + 16] = qs[j] >> 4;
    }
#endif
}

/* One row of int4 codes -> float32: nibbles split into a 32-byte scratch, then widened. */
static inline __attribute__((always_inline)) void dequant_q4_row(const uint8_t *q,
                                                                 const float *scales,
                                                                 const float *mins, int inputs,
                                                                 int group, float *out) {
    uint8_t codes[32];
    for (int b = 0; b < inputs / 32; b++) {
        const int g = b * 32 / group;
        const vec_t s = vset1(scales[g]), m = vset1(mins[g]);
        const uint8_t *qs = q + (int64_t)b * 16;
        split_nibbles(qs, codes);
        for (int j = 0; j < 32; j += VEC)
            vstore(out + (int64_t)b * 32 + j, vfma(bytes_to_vec(codes + j), s, m));
    }
}

static inline __attribute__((always_inline)) void dequant_q8_row(const int8_t *q,
                                                                 const float *scales, int inputs,
                                                                 int group, float *out) {
    for (int b = 0; b < inputs / 32; b++) {
        const vec_t s = vset1(scales[b * 32 / group]);
        for (int j = 0; j < 32; j += VEC) {
            const int64_t i = (int64_t)b * 32 + j;
            vstore(out + i, vmul(sbytes_to_vec(q + i), s));
        }
    }
}

/* One 32-weight int4 block dequantized straight into registers (s, m: its scale and min). */
static inline __attribute__((always_inline)) void q4_block(const uint8_t *qs, vec_t s, vec_t m,
                                                           vec_t w[32 / VEC]) {
#if defined(__AVX512F__)
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    w[0] = vfma(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), s, m);
    w[1] = vfma(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), s, m);
#elif defined(__AVX2__) && defined(__FMA__)
    const __m128i b = _mm_loadu_si128((const __m128i *)qs), low4 = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    w[0] = vfma(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), s, m);
    w[1] = vfma(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), s, m);
    w[2] = vfma(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), s, m);
    w[3] = vfma(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), s, m);
#else
    uint8_t codes[32];
    split_nibbles(qs, codes);
    for (int i = 0; i < 32 / VEC; i++) w[i] = vfma(bytes_to_vec(codes + i * VEC), s, m);
#endif
}

/* One 32-weight int8 block dequantized straight into registers (s: its scale). */
static inline __attribute__((always_inline)) void q8_block(const int8_t *qs, vec_t s,
                                                           vec_t w[32 / VEC]) {
    for (int i = 0; i < 32 / VEC; i++) w[i] = vmul(sbytes_to_vec(qs + i * VEC), s);
}

/* One input row (single-stream decode): ROWS_PER_BLOCK int4 or int8 rows dequantized in
 * registers and dotted at once, nothing staged in memory. */
static inline __attribute__((always_inline)) void block_rows_x1(
    const int bits, const void *q, const float *scales, const float *mins, int o0, int count,
    const float *x, int inputs, int group, const float *bias, float *y) {
    const int groups = inputs / group;
    const int64_t row_bytes = bits == 4 ? inputs / 2 : inputs, block_bytes = bits == 4 ? 16 : 32;
    const uint8_t *qr[ROWS_PER_BLOCK];
    const float *sr[ROWS_PER_BLOCK], *mr[ROWS_PER_BLOCK];
    vec_t acc[ROWS_PER_BLOCK][32 / VEC];
    for (int r = 0; r < ROWS_PER_BLOCK; r++) {
        const int o = o0 + (r < count ? r : count - 1);
        qr[r] = (const uint8_t *)q + (int64_t)o * row_bytes;
        sr[r] = scales + (int64_t)o * groups;
        mr[r] = mins ? mins + (int64_t)o * groups : NULL;
        for (int i = 0; i < 32 / VEC; i++) acc[r][i] = vzero();
    }
    for (int b = 0; b < inputs / 32; b++) {
        const int g = b * 32 / group;
        vec_t xv[32 / VEC];
        for (int i = 0; i < 32 / VEC; i++) xv[i] = vload(x + (int64_t)b * 32 + i * VEC);
        for (int r = 0; r < ROWS_PER_BLOCK; r++) {
            vec_t w[32 / VEC];
            if (bits == 4)
                q4_block(qr[r] + b * block_bytes, vset1(sr[r][g]), vset1(mr[r][g]), w);
            else
                q8_block((const int8_t *)qr[r] + b * block_bytes, vset1(sr[r][g]), w);
            for (int i = 0; i < 32 / VEC; i++) acc[r][i] = vfma(w[i], xv[i], acc[r][i]);
        }
    }
    for (int r = 0; r < count; r++) {
        vec_t total = acc[r][0];
        for (int i = 1; i < 32 / VEC; i++) total = vadd(total, acc[r][i]);
        y[o0 + r] = vsum(total) + (bias ? bias[o0 + r] : 0.0f);
    }
}

/* Dots ROWS_PER_BLOCK dequantized weight rows (w, [4, inputs]) with every input row, M_BLOCK
 * input rows at a time so each weight vector loaded serves several of them. */
static inline __attribute__((always_inline)) void dot_block(const float *w, int count,
                                                            const float *x, int64_t x_stride,
                                                            int rows, int inputs,
                                                            const float *bias, int o0, float *y,
                                                            int64_t y_stride) {
    for (int m0 = 0; m0 < rows; m0 += M_BLOCK) {
        const float *xm[M_BLOCK];
        for (int m = 0; m < M_BLOCK; m++)
            xm[m] = x + (int64_t)(m0 + m < rows ? m0 + m : rows - 1) * x_stride;
        vec_t acc[ROWS_PER_BLOCK][M_BLOCK];
        for (int r = 0; r < ROWS_PER_BLOCK; r++)
            for (int m = 0; m < M_BLOCK; m++) acc[r][m] = vzero();
        for (int i = 0; i < inputs; i += VEC) {
            vec_t xv[M_BLOCK];
            for (int m = 0; m < M_BLOCK; m++) xv[m] = vload(xm[m] + i);
            for (int r = 0; r < ROWS_PER_BLOCK; r++) {
                const vec_t wv = vload(w + (int64_t)r * inputs + i);
                for (int m = 0; m < M_BLOCK; m++) acc[r][m] = vfma(wv, xv[m], acc[r][m]);
            }
        }
        for (int m = 0; m < M_BLOCK && m0 + m < rows; m++)
            for (int r = 0; r < count; r++) {
                float sum = vsum(acc[r][m]);
                if (bias) sum += bias[o0 + r];
                y[(int64_t)(m0 + m) * y_stride + o0 + r] = sum;
            }
    }
}

static int check(int rows, int outputs, int inputs, int group) {
    if (rows <= 0 || outputs <= 0 || inputs <= 0 || inputs % 32 || inputs > MAX_INPUTS) return -1;
    if (group && (group % 32 || inputs % group)) return -1;
    return 0;
}

/* y = x @ dequant(q)^T (+ bias) for int4 (bits 4, with mins) or int8 (bits 8) codes. */
static int linear_quant(const int bits, const float *x, int64_t x_stride, const void *q,
                        const float *scales, const float *mins, const float *bias, float *y,
                        int64_t y_stride, int rows, int outputs, int inputs, int group,
                        int num_threads) {
    if (check(rows, outputs, inputs, group) || !group) return -1;
    const int blocks = (outputs + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    const int groups = inputs / group;
    const int64_t row_bytes = bits == 4 ? inputs / 2 : inputs;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int ob = 0; ob < blocks; ob++) {
        float w[ROWS_PER_BLOCK * MAX_INPUTS] __attribute__((aligned(64)));
        const int o0 = ob * ROWS_PER_BLOCK;
        const int count = outputs - o0 < ROWS_PER_BLOCK ? outputs - o0 : ROWS_PER_BLOCK;
        if (rows == 1) {
            block_rows_x1(bits, q, scales, mins, o0, count, x, inputs, group, bias, y);
            continue;
        }
        for (int r = 0; r < ROWS_PER_BLOCK; r++) {
            const int o = o0 + (r < count ? r : count - 1);
            const uint8_t *codes = (const uint8_t *)q + (int64_t)o * row_bytes;
            const float *s = scales + (int64_t)o * groups;
            if (bits == 4)
                dequant_q4_row(codes, s, mins + (int64_t)o * groups, inputs, group,
                               w + (int64_t)r * inputs);
            else
                dequant_q8_row((const int8_t *)codes, s, inputs, group, w + (int64_t)r * inputs);
        }
        dot_block(w, count, x, x_stride, rows, inputs, bias, o0, y, y_stride);
    }
    return 0;
}

int linear_q4_f32(const float *x, int64_t x_stride, const uint8_t *q, const float *scales,
                  const float *mins, const float *bias, float *y, int64_t y_stride, int rows,
                  int outputs, int inputs, int group, int num_threads) {
    return linear_quant(4, x, x_stride, q, scales, mins, bias, y, y_stride, rows, outputs, inputs,
                        group, num_threads);
}

int linear_q8_f32(const float *x, int64_t x_stride, const int8_t *q, const float *scales,
                  const float *bias, float *y, int64_t y_stride, int rows, int outputs,
                  int inputs, int group, int num_threads) {
    return linear_quant(8, x, x_stride, q, scales, NULL, bias, y, y_stride, rows, outputs, inputs,
                        group, num_threads);
}

/* Every row of the codes dequantized to float32, written as float32 or (out_bf16) as bf16
 * rounded to nearest even, torch's .to(torch.bfloat16): the bf16 GEMM's weights. */
static int dequantize(const int bits, const void *q, const float *scales, const float *mins,
                      void *out, int out_bf16, int outputs, int inputs, int group,
                      int num_threads) {
    if (check(1, outputs, inputs, group) || !group) return -1;
    const int groups = inputs / group;
    const int64_t row_bytes = bits == 4 ? inputs / 2 : inputs;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int o = 0; o < outputs; o++) {
        float row[MAX_INPUTS] __attribute__((aligned(64)));
        float *dst = out_bf16 ? row : (float *)out + (int64_t)o * inputs;
        const uint8_t *codes = (const uint8_t *)q + (int64_t)o * row_bytes;
        if (bits == 4)
            dequant_q4_row(codes, scales + (int64_t)o * groups, mins + (int64_t)o * groups,
                           inputs, group, dst);
        else
            dequant_q8_row((const int8_t *)codes, scales + (int64_t)o * groups, inputs, group, dst);
        if (!out_bf16) continue;
        uint16_t *b = (uint16_t *)out + (int64_t)o * inputs;
#if HAVE_FAST_BF16
        for (int i = 0; i < inputs; i += 32) /* inputs: a multiple of 32 (check) */
            _mm512_storeu_si512((__m512i *)(b + i),
                                (__m512i)_mm512_cvtne2ps_pbh(vload(row + i + 16), vload(row + i)));
#else
        for (int i = 0; i < inputs; i++) b[i] = f32_to_bf16(row[i]);
#endif
    }
    return 0;
}

int dequantize_q4_f32(const uint8_t *q, const float *scales, const float *mins, float *out,
                      int outputs, int inputs, int group, int num_threads) {
    return dequantize(4, q, scales, mins, out, 0, outputs, inputs, group, num_threads);
}

int dequantize_q8_f32(const int8_t *q, const float *scales, float *out, int outputs, int inputs,
                      int group, int num_threads) {
    return dequantize(8, q, scales, NULL, out, 0, outputs, inputs, group, num_threads);
}

int dequantize_q4_bf16(const uint8_t *q, const float *scales, const float *mins, uint16_t *out,
                       int outputs, int inputs, int group, int num_threads) {
    return dequantize(4, q, scales, mins, out, 1, outputs, inputs, group, num_threads);
}

int dequantize_q8_bf16(const int8_t *q, const float *scales, uint16_t *out, int outputs,
                       int inputs, int group, int num_threads) {
    return dequantize(8, q, scales, NULL, out, 1, outputs, inputs, group, num_threads);
}
