/* The AMX quantized linear for decode-sized batches (12 to 95 rows, cpu.py; prefill-sized
 * ones dequantize the weights to bf16 for oneDNN's GEMM): y[M, O] = x[M, I] @ dequant(w)[O, I]^T
 * (+ float32 bias), bf16 x, rounded once to bf16; the weight layouts of linear_quant.c (int4
 * codes with (scale, min) per group, int8 codes with a scale).
 *
 * Exact where a bf16 GEMM on dequantized weights is not: the codes themselves (0..15, or
 * -127..127) are bf16 numbers, so the tiles multiply the bf16 activations by the codes with
 * float32 sums, one group of inputs at a time, and each group's sum is scaled in float32:
 *   y[m, o] = sum_g scale[o, g] * sum_{k in g} x[m, k] q[o, k] + min[o, g] * sum_{k in g} x[m, k]
 * Only float32 rounding separates it from x @ dequant(w)^T in float32 (the bf16 GEMM rounds
 * each weight to bf16 first, as the dense bf16 model holds it: about 1e-3 relative).
 *
 * Tiles (16 rows of 64 bytes, granted by Linux on request: amx_permitted): A = 16 output
 * rows x 32 codes (the weights' natural order, converted to bf16 in an L1 buffer), B = 32
 * inputs x 16 activation rows (x transposed in pairs, packed once per chunk of CHUNK_ROWS),
 * C = 16 x 16 float32 (outputs x rows). Each 16-output block runs on one thread; each
 * group's converted codes serve every row tile of the chunk.
 * Each output is summed in a fixed order whatever the number of rows (batch invariance).
 */
#include "common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && \
    defined(__AVX512BF16__)
#define HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TILE 16                 /* rows of every tile, and columns of C */
#define KB 32                   /* bf16 inputs per tile row (64 bytes) */
#define BLOCK_ELEMS (TILE * KB) /* one A or B tile's bf16 elements */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* Linux hands AMX state to a process only on request (once; later calls are no-ops). */
static inline int amx_permitted(void) {
    static int state; /* 0 unknown, 1 granted, -1 refused */
    if (!state) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? -1 : 1;
    return state == 1;
}

/* The calling thread's tiles 0..count-1 as 16 rows of 64 bytes. */
static inline void configure_tiles(int count) {
    TileConfig config = {0};
    config.palette = 1;
    for (int t = 0; t < count; t++) {
        config.rows[t] = TILE;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* C tiles 0..n-1 (n <= 4) to c[0..n-1]: tile numbers are immediates, hence the branches. */
static inline void store_c_tiles(int n, float (*c)[TILE][TILE]) {
    _tile_stored(0, c[0], 64);
    if (n > 1) _tile_stored(1, c[1], 64);
    if (n > 2) _tile_stored(2, c[2], 64);
    if (n > 3) _tile_stored(3, c[3], 64);
}

/* The shapes the kernel takes: whole 32-input blocks and groups. */
static inline int amx_shapes_ok(int rows, int outputs, int inputs, int group) {
    return rows > 0 && outputs > 0 && inputs > 0 && inputs % KB == 0 && group > 0 &&
           group % KB == 0 && inputs % group == 0;
}
#else
#define HAVE_AMX 0
#endif

#if HAVE_AMX
#define CHUNK_ROWS 256    /* rows per packing of x: 2 bytes x inputs each, kept within L2 */
#define ROW_TILES (CHUNK_ROWS / TILE) /* a chunk's row tiles, each converted code serves all */
#define IN_FLIGHT 4       /* C tiles summed at once: one alone waits on each product's latency */

/* bf16 of 0..15, looked up by vpermw: the int4 codes' values. */
static inline __m512i q4_to_bf16(__m256i codes) {
    const __m512i table = _mm512_set_epi16(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4170, 0x4160, 0x4150, 0x4140, 0x4130,
        0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0);
    return _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(codes), table);
}

/* One 32-code block of each of 16 output rows as an A tile (rows past `count` repeat the last). */
static void convert_block(int bits, const uint8_t *q, int64_t row_bytes, int b, int count,
                          uint16_t *tile) {
    for (int r = 0; r < TILE; r++) {
        const uint8_t *row = q + (int64_t)(r < count ? r : count - 1) * row_bytes;
        __m512i out;
        if (bits == 4) {
            const __m128i packed = _mm_loadu_si128((const __m128i *)(row + (int64_t)b * 16));
            const __m128i low4 = _mm_set1_epi8(0x0f);
            const __m128i lo = _mm_and_si128(packed, low4);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
            out = q4_to_bf16(_mm256_set_m128i(hi, lo));
        } else {
            const __m256i codes = _mm256_loadu_si256((const __m256i *)(row + (int64_t)b * 32));
            const __m512 lo =
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(codes)));
            const __m512 hi =
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(codes, 1)));
            out = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        }
        _mm512_store_si512((__m512i *)(tile + r * KB), out);
    }
}

/* x's rows as B tiles: block (t, b) holds rows 16t.. and inputs 32b.. as [16 pairs][16 rows][2]
 * (zero rows past `rows`); sums[t][g][16]: each row's sum over each group (int4's mins). */
static void pack_rows(const uint16_t *x, int64_t x_stride, int rows, int inputs, int group,
                      uint16_t *packed, float *sums, int num_threads) {
    const int tiles = (rows + TILE - 1) / TILE, blocks = inputs / KB, groups = inputs / group;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int t = 0; t < tiles; t++) {
        for (int m = 0; m < TILE; m++) {
            const int row = t * TILE + m;
            const uint32_t *src = (const uint32_t *)(x + (int64_t)row * x_stride);
            for (int b = 0; b < blocks; b++) {
                uint32_t *dst = (uint32_t *)(packed + ((int64_t)t * blocks + b) * BLOCK_ELEMS);
                for (int p = 0; p < KB / 2; p++)
                    dst[p * TILE + m] = row < rows ? src[b * 16 + p] : 0;
            }
            if (!sums) continue;
            for (int g = 0; g < groups; g++) {
                float sum = 0.0f;
                if (row < rows)
                    for (int k = g * group; k < (g + 1) * group; k++)
                        sum += bf16_to_f32(x[(int64_t)row * x_stride + k]);
                sums[((int64_t)t * groups + g) * TILE + m] = sum;
            }
        }
    }
}


/* c[i] = the codes' group (A tiles `codes`, `count` blocks from block b0) times row tile i of
 * x (B tiles `xb` + i * tile_stride), for n <= IN_FLIGHT row tiles whose sums overlap. */
static inline __attribute__((always_inline)) void dot_tiles(const uint16_t *codes,
                                                            const uint16_t *xb, int64_t tile_stride,
                                                            int b0, int count, int n,
                                                            float c[IN_FLIGHT][TILE][TILE]) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
#define DOT(i, b_tile)                                                         \
    if (n > i) {                                                               \
        _tile_loadd(b_tile, xb + i * tile_stride + (int64_t)(b0 + j) * BLOCK_ELEMS, 64); \
        _tile_dpbf16ps(i, 4, b_tile);                                          \
    }
    for (int j = 0; j < count; j++) {
        _tile_loadd(4, codes + j * BLOCK_ELEMS, 64);
        DOT(0, 5)
        DOT(1, 6)
        DOT(2, 5)
        DOT(3, 6)
    }
#undef DOT
    store_c_tiles(n, c);
}

/* Up to CHUNK_ROWS rows of linear_quant_amx. */
static int linear_quant_chunk(int bits, const uint16_t *x, int64_t x_stride, const void *q,
                              const float *scales, const float *mins, const float *bias,
                              uint16_t *y, int64_t y_stride, int rows, int outputs, int inputs,
                              int group, int num_threads) {
    const int tiles = (rows + TILE - 1) / TILE, blocks = inputs / KB, groups = inputs / group;
    const int per_group = group / KB, out_blocks = (outputs + TILE - 1) / TILE;
    const int64_t row_bytes = bits == 4 ? inputs / 2 : inputs;
    uint16_t *packed = aligned_alloc(64, (size_t)tiles * blocks * BLOCK_ELEMS * sizeof(uint16_t));
    float *sums = mins ? malloc((size_t)tiles * groups * TILE * sizeof(float)) : NULL;
    int status = 0;
    if (!packed || (mins && !sums)) {
        status = -3;
        goto done;
    }
    pack_rows(x, x_stride, rows, inputs, group, packed, mins ? sums : NULL, num_threads);
#pragma omp parallel num_threads(num_threads)
    {
        configure_tiles(7); /* 0-3: C, 4: A, 5-6: B */
        /* One group's converted codes, and the block's float32 sums for the chunk's rows. */
        uint16_t *codes = aligned_alloc(64, (size_t)per_group * BLOCK_ELEMS * sizeof(uint16_t));
        float acc[ROW_TILES][TILE][TILE] __attribute__((aligned(64)));
        float c[IN_FLIGHT][TILE][TILE] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int ob = 0; ob < out_blocks; ob++) {
            if (!codes) continue;
            const int o0 = ob * TILE, count = outputs - o0 < TILE ? outputs - o0 : TILE;
            const uint8_t *qb = (const uint8_t *)q + (int64_t)o0 * row_bytes;
            memset(acc, 0, sizeof acc);
            for (int g = 0; g < groups; g++) {
                for (int j = 0; j < per_group; j++)
                    convert_block(bits, qb, row_bytes, g * per_group + j, count,
                                  codes + j * BLOCK_ELEMS);
                __m512 scale[TILE], low[TILE];
                for (int r = 0; r < TILE; r++) {
                    const int64_t at = (int64_t)(o0 + (r < count ? r : count - 1)) * groups + g;
                    scale[r] = _mm512_set1_ps(scales[at]);
                    low[r] = _mm512_set1_ps(mins ? mins[at] : 0.0f);
                }
                for (int t = 0; t < tiles; t += IN_FLIGHT) {
                    const int n = tiles - t < IN_FLIGHT ? tiles - t : IN_FLIGHT;
                    const uint16_t *xb = packed + (int64_t)t * blocks * BLOCK_ELEMS;
                    dot_tiles(codes, xb, (int64_t)blocks * BLOCK_ELEMS, g * per_group, per_group,
                              n, c);
                    for (int i = 0; i < n; i++) {
                        const int64_t at = ((int64_t)(t + i) * groups + g) * TILE;
                        const __m512 sum = mins ? _mm512_loadu_ps(sums + at) : _mm512_setzero_ps();
                        for (int r = 0; r < TILE; r++) {
                            __m512 a = _mm512_load_ps(acc[t + i][r]);
                            a = _mm512_fmadd_ps(_mm512_load_ps(c[i][r]), scale[r], a);
                            if (mins) a = _mm512_fmadd_ps(sum, low[r], a);
                            _mm512_store_ps(acc[t + i][r], a);
                        }
                    }
                }
            }
            for (int t = 0; t < tiles; t++)
                for (int m = 0; m < TILE && t * TILE + m < rows; m++) {
                    uint16_t *out = y + (int64_t)(t * TILE + m) * y_stride + o0;
                    for (int r = 0; r < count; r++)
                        out[r] = f32_to_bf16(acc[t][r][m] + (bias ? bias[o0 + r] : 0.0f));
                }
        }
        if (!codes) {
#pragma omp atomic write
            status = -3;
        }
        free(codes);
        _tile_release();
    }
done:
    free(packed);
    free(sums);
    return status;
}

static int linear_quant_amx(int bits, const uint16_t *x, int64_t x_stride, const void *q,
                            const float *scales, const float *mins, const float *bias, uint16_t *y,
                            int64_t y_stride, int rows, int outputs, int inputs, int group,
                            int num_threads) {
    if (!amx_shapes_ok(rows, outputs, inputs, group)) return -1;
    if (!amx_permitted()) return -2;
    int status = 0;
    for (int r0 = 0; r0 < rows && !status; r0 += CHUNK_ROWS)
        status = linear_quant_chunk(bits, x + (int64_t)r0 * x_stride, x_stride, q, scales, mins,
                                    bias, y + (int64_t)r0 * y_stride, y_stride,
                                    rows - r0 < CHUNK_ROWS ? rows - r0 : CHUNK_ROWS, outputs,
                                    inputs, group, num_threads);
    return status;
}

int cpu_kernels_amx(void) { return amx_permitted(); }

#else
static int linear_quant_amx(int bits, const uint16_t *x, int64_t x_stride, const void *q,
                            const float *scales, const float *mins, const float *bias, uint16_t *y,
                            int64_t y_stride, int rows, int outputs, int inputs, int group,
                            int num_threads) {
    (void)bits, (void)x, (void)x_stride, (void)q, (void)scales, (void)mins, (void)bias, (void)y;
    (void)y_stride, (void)rows, (void)outputs, (void)inputs, (void)group, (void)num_threads;
    return -2; /* built for a CPU without AMX */
}

int cpu_kernels_amx(void) { return 0; }
#endif

int linear_q4_amx(const uint16_t *x, int64_t x_stride, const uint8_t *q, const float *scales,
                  const float *mins, const float *bias, uint16_t *y, int64_t y_stride, int rows,
                  int outputs, int inputs, int group, int num_threads) {
    return linear_quant_amx(4, x, x_stride, q, scales, mins, bias, y, y_stride, rows, outputs,
                            inputs, group, num_threads);
}

int linear_q8_amx(const uint16_t *x, int64_t x_stride, const int8_t *q, const float *scales,
                  const float *bias, uint16_t *y, int64_t y_stride, int rows, int outputs,
                  int inputs, int group, int num_threads) {
    return linear_quant_amx(8, x, x_stride, q, scales, NULL, bias, y, y_stride, rows, outputs,
                            inputs, group, num_threads);
}
