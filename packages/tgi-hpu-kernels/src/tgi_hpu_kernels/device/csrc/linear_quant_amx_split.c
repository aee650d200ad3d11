/* The AMX quantized linear for prefill-sized batches: y[M, O] = x[M, I] @ dequant(w)[O, I]^T
 * (+ float32 bias), bf16 x, rounded once to bf16; the weight layouts of linear_quant.c.
 *
 * The weights are dequantized in float32 and split into two bf16 halves, w = hi + lo
 * (hi = bf16(w), lo = bf16(w - hi)), so the tiles' bf16 products with float32 sums see each
 * weight to 2^-18 of its size (rounding it to bf16 alone would cost about 1e-3 of relative
 * error in the outputs). x @ w^T = x @ hi^T + x @ lo^T: two tile products per 32 inputs, summed
 * in the tiles over the whole row, with nothing stored or scaled per group. The exact kernel
 * (linear_quant_amx.c) pays a tile store and 32 float32 FMAs per product instead: slower from
 * about 96 rows (1.3-1.7x at 256); below that, this one's conversion of the weights costs more.
 *
 * Tiles: A = 16 rows of x x 32 inputs, loaded from x itself; B = hi or lo of 32 inputs x 16
 * outputs as bf16 pairs, made once per 16-output block and chunk of rows (L1/L2); C = 16 x 16
 * float32 (rows x outputs), ROW_TILES of them at once. Each 16-output block runs on one
 * thread; x goes through in chunks that stay in L2. Each output is summed in a fixed order
 * whatever the number of rows.
 */
#include "amx.h"

#if HAVE_AMX
#define ROW_TILES 3           /* row tiles per pass: C 0-2, A (x) 3-5, B (hi, lo) 6-7 */
#define CHUNK_BYTES (1 << 20) /* x rows per pass over the weights: 1 MB of them (L2) */

/* 16 float32 -> their bf16 values widened back to float32 (what the tiles will see). */
static inline __m512 widen(__m256i bf16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}

/* [16 rows][16 pairs] of bf16 pairs -> a B tile, [16 pairs][16 rows][2], by gathers. */
static inline void transpose_pairs(const uint16_t rows[TILE][KB], uint16_t *tile) {
    const __m512i across = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(KB / 2));
    for (int p = 0; p < KB / 2; p++)
        _mm512_store_si512((__m512i *)(tile + p * KB),
                           _mm512_i32gather_epi32(_mm512_add_epi32(across, _mm512_set1_epi32(p)),
                                                  (const void *)rows, 4));
}

/* One 32-input block of 16 output rows (rows past `count` repeat the last), dequantized in
 * float32, as two B tiles: hi, then lo. */
static void split_block(int bits, const uint8_t *q, int64_t row_bytes, const float *scales,
                        const float *mins, int groups, int group, int b, int count,
                        uint16_t *tiles) {
    uint16_t hi_rows[TILE][KB] __attribute__((aligned(64)));
    uint16_t lo_rows[TILE][KB] __attribute__((aligned(64)));
    const int g = b * KB / group;
    for (int r = 0; r < TILE; r++) {
        const int o = r < count ? r : count - 1;
        const uint8_t *row = q + (int64_t)o * row_bytes;
        const __m512 s = _mm512_set1_ps(scales[(int64_t)o * groups + g]);
        __m512 w0, w1;
        if (bits == 4) {
            const __m128i packed = _mm_loadu_si128((const __m128i *)(row + (int64_t)b * 16));
            const __m128i low4 = _mm_set1_epi8(0x0f);
            const __m512 m = _mm512_set1_ps(mins[(int64_t)o * groups + g]);
            const __m128i lo = _mm_and_si128(packed, low4);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
            w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), s, m);
            w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), s, m);
        } else {
            const int8_t *codes = (const int8_t *)row + (int64_t)b * KB;
            w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                   _mm_loadu_si128((const __m128i *)codes))),
                               s);
            w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                   _mm_loadu_si128((const __m128i *)(codes + 16)))),
                               s);
        }
        const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(w1, w0);
        const __m512 r0 = _mm512_sub_ps(w0, widen(_mm512_castsi512_si256(hi)));
        const __m512 r1 = _mm512_sub_ps(w1, widen(_mm512_extracti64x4_epi64(hi, 1)));
        _mm512_store_si512((__m512i *)hi_rows[r], hi);
        _mm512_store_si512((__m512i *)lo_rows[r], (__m512i)_mm512_cvtne2ps_pbh(r1, r0));
    }
    transpose_pairs((const uint16_t(*)[KB])hi_rows, tiles);
    transpose_pairs((const uint16_t(*)[KB])lo_rows, tiles + BLOCK_ELEMS);
}

/* c[i] = row tile i of x (A tiles from a + i * 16 rows, a_stride bytes between rows) times
 * the block's weights (hi/lo B tiles, `blocks` pairs), for i < n. */
static inline __attribute__((always_inline)) void dot_rows(const uint16_t *a, int64_t a_stride,
                                                           const uint16_t *tail, int tail_at,
                                                           int inputs, const uint16_t *weights,
                                                           int blocks, int n,
                                                           float c[ROW_TILES][TILE][TILE]) {
    const uint16_t *rows[ROW_TILES];
    int64_t strides[ROW_TILES];
    for (int i = 0; i < ROW_TILES; i++) {
        const int tail_tile = i >= tail_at;
        rows[i] = tail_tile ? tail : a + (int64_t)i * TILE * (a_stride / 2);
        strides[i] = tail_tile ? (int64_t)inputs * 2 : a_stride;
    }
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
#define ROW(i, a_tile)                                                           \
    if (n > i) {                                                                 \
        _tile_loadd(a_tile, rows[i] + b * KB, strides[i]);                       \
        _tile_dpbf16ps(i, a_tile, 6);                                            \
        _tile_dpbf16ps(i, a_tile, 7);                                            \
    }
    for (int64_t b = 0; b < blocks; b++) {
        _tile_loadd(6, weights + 2 * b * BLOCK_ELEMS, 64);
        _tile_loadd(7, weights + (2 * b + 1) * BLOCK_ELEMS, 64);
        ROW(0, 3)
        ROW(1, 4)
        ROW(2, 5)
    }
#undef ROW
    store_c_tiles(n, c);
}

/* Up to a chunk of rows (x and y already offset to its first row). */
static void chunk_rows(int bits, const uint16_t *x, int64_t x_stride, const uint16_t *tail,
                       const void *q, const float *scales, const float *mins, const float *bias,
                       uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                       int group, int num_threads, int *status) {
    const int blocks = inputs / KB, groups = inputs / group;
    const int tiles = (rows + TILE - 1) / TILE, full = rows / TILE;
    const int out_blocks = (outputs + TILE - 1) / TILE;
    const int64_t row_bytes = bits == 4 ? inputs / 2 : inputs;
#pragma omp parallel num_threads(num_threads)
    {
        configure_tiles(8); /* 0-2: C, 3-5: A (x), 6-7: B (hi, lo) */
        /* The block's weights as hi/lo B tiles. */
        uint16_t *weights =
            aligned_alloc(64, (size_t)2 * blocks * BLOCK_ELEMS * sizeof(uint16_t));
        float c[ROW_TILES][TILE][TILE] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int ob = 0; ob < out_blocks; ob++) {
            if (!weights) continue;
            const int o0 = ob * TILE, count = outputs - o0 < TILE ? outputs - o0 : TILE;
            for (int b = 0; b < blocks; b++)
                split_block(bits, (const uint8_t *)q + (int64_t)o0 * row_bytes, row_bytes,
                            scales + (int64_t)o0 * groups,
                            mins ? mins + (int64_t)o0 * groups : NULL, groups, group, b, count,
                            weights + 2 * (int64_t)b * BLOCK_ELEMS);
            const __mmask16 keep = count == TILE ? 0xffff : (__mmask16)((1u << count) - 1u);
            const __m512 bias_v =
                bias ? _mm512_maskz_loadu_ps(keep, bias + o0) : _mm512_setzero_ps();
            for (int t0 = 0; t0 < tiles; t0 += ROW_TILES) {
                const int n = tiles - t0 < ROW_TILES ? tiles - t0 : ROW_TILES;
                dot_rows(x + (int64_t)t0 * TILE * x_stride, x_stride * (int64_t)sizeof(uint16_t),
                         tail, full - t0, inputs, weights, blocks, n, c);
                for (int i = 0; i < n; i++)
                    for (int r = 0; r < TILE && (t0 + i) * TILE + r < rows; r++) {
                        const __m512 v = _mm512_add_ps(_mm512_load_ps(c[i][r]), bias_v);
                        uint16_t *out = y + (int64_t)((t0 + i) * TILE + r) * y_stride + o0;
                        _mm256_mask_storeu_epi16(out, keep, (__m256i)_mm512_cvtneps_pbh(v));
                    }
            }
        }
        if (!weights) {
#pragma omp atomic write
            *status = -3;
        }
        free(weights);
        _tile_release();
    }
}

static int linear_quant_split(int bits, const uint16_t *x, int64_t x_stride, const void *q,
                              const float *scales, const float *mins, const float *bias,
                              uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                              int group, int num_threads) {
    if (!amx_shapes_ok(rows, outputs, inputs, group)) return -1;
    if (!amx_permitted()) return -2;
    /* The last rows, zero-padded to a whole tile. */
    const int full = rows / TILE * TILE;
    uint16_t *tail = calloc((size_t)TILE * inputs, sizeof(uint16_t));
    if (!tail) return -3;
    for (int r = full; r < rows; r++)
        memcpy(tail + (int64_t)(r - full) * inputs, x + (int64_t)r * x_stride,
               (size_t)inputs * sizeof(uint16_t));
    int chunk = CHUNK_BYTES / (inputs * (int)sizeof(uint16_t)) / TILE * TILE;
    if (chunk < TILE) chunk = TILE;
    int status = 0;
    for (int r0 = 0; r0 < rows && !status; r0 += chunk)
        chunk_rows(bits, x + (int64_t)r0 * x_stride, x_stride, tail, q, scales, mins, bias,
                   y + (int64_t)r0 * y_stride, y_stride, rows - r0 < chunk ? rows - r0 : chunk,
                   outputs, inputs, group, num_threads, &status);
    free(tail);
    return status;
}

#else
static int linear_quant_split(int bits, const uint16_t *x, int64_t x_stride, const void *q,
                              const float *scales, const float *mins, const float *bias,
                              uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                              int group, int num_threads) {
    (void)bits, (void)x, (void)x_stride, (void)q, (void)scales, (void)mins, (void)bias, (void)y;
    (void)y_stride, (void)rows, (void)outputs, (void)inputs, (void)group, (void)num_threads;
    return -2; /* built for a CPU without AMX */
}
#endif

int linear_q4_amx_split(const uint16_t *x, int64_t x_stride, const uint8_t *q,
                        const float *scales, const float *mins, const float *bias, uint16_t *y,
                        int64_t y_stride, int rows, int outputs, int inputs, int group,
                        int num_threads) {
    return linear_quant_split(4, x, x_stride, q, scales, mins, bias, y, y_stride, rows, outputs,
                              inputs, group, num_threads);
}

int linear_q8_amx_split(const uint16_t *x, int64_t x_stride, const int8_t *q,
                        const float *scales, const float *bias, uint16_t *y, int64_t y_stride,
                        int rows, int outputs, int inputs, int group, int num_threads) {
    return linear_quant_split(8, x, x_stride, q, scales, NULL, bias, y, y_stride, rows, outputs,
                              inputs, group, num_threads);
}
