/* Elementwise kernels of the native CPU kernels (see common.h): RMSNorm fused with the residual
 * add before it, SiLU-and-mul of the merged gate/up projection, rotary embeddings in place.
 * Each is one pass over its rows where torch runs several ops; rows run in parallel. Plain C
 * loops the compiler vectorizes.
 */
#include "common.h"

/* out = x / sqrt(mean(x^2) + eps) * weight per row; with a residual, x is first replaced by
 * x + residual (rounded to the dtype), which is also written back to residual. */
static inline __attribute__((always_inline)) void rms_norm_row(
    const void *x, void *residual, const void *weight, void *out, int64_t row, int64_t x_stride,
    int hidden, float eps, int is_bf16) {
    float values[MAX_ROW];
    float part[16] = {0};
    for (int i = 0; i < hidden; i++) {
        float v = load_at(x, row * x_stride + i, is_bf16);
        if (residual) {
            v += load_at(residual, row * hidden + i, is_bf16);
            store_at(residual, row * hidden + i, v, is_bf16);
            v = load_at(residual, row * hidden + i, is_bf16);
        }
        values[i] = v;
    }
    for (int i = 0; i < hidden; i++) part[i & 15] += values[i] * values[i];
    for (int width = 8; width > 0; width /= 2)
        for (int l = 0; l < width; l++) part[l] += part[l + width];
    const float inverse = 1.0f / sqrtf(part[0] / (float)hidden + eps);
    for (int i = 0; i < hidden; i++)
        store_at(out, row * hidden + i, values[i] * inverse * load_at(weight, i, is_bf16),
                 is_bf16);
}

/* out[r, i] = silu(x[r, i]) * x[r, inter + i]. */
static inline __attribute__((always_inline)) void silu_mul_row(const void *x, void *out,
                                                               int64_t row, int inter,
                                                               int is_bf16) {
    for (int i = 0; i < inter; i++) {
        const float gate = load_at(x, row * 2 * inter + i, is_bf16);
        const float up = load_at(x, row * 2 * inter + inter + i, is_bf16);
        store_at(out, row * inter + i, gate / (1.0f + exp_approx(-gate)) * up, is_bf16);
    }
}

/* x = x * cos + swap_halves(x) * signed_sin on `heads` heads of one row, in place. */
static inline __attribute__((always_inline)) void rotary_row(void *x, const void *cos,
                                                             const void *sin, int64_t row,
                                                             int64_t x_stride, int heads,
                                                             int head_dim, int is_bf16) {
    const int half = head_dim / 2;
    for (int h = 0; h < heads; h++) {
        const int64_t base = row * x_stride + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float lo = load_at(x, base + i, is_bf16), hi = load_at(x, base + half + i, is_bf16);
            const int64_t t = row * head_dim;
            store_at(x, base + i, lo * load_at(cos, t + i, is_bf16) + hi * load_at(sin, t + i, is_bf16),
                     is_bf16);
            store_at(x, base + half + i,
                     hi * load_at(cos, t + half + i, is_bf16) + lo * load_at(sin, t + half + i, is_bf16),
                     is_bf16);
        }
    }
}

#define ELEMENTWISE(SUFFIX, IS_BF16)                                                          \
    int rms_norm_##SUFFIX(const void *x, int64_t x_stride, void *residual, const void *weight, \
                          void *out, int rows, int hidden, float eps, int num_threads) {      \
        if (hidden > MAX_ROW) return -1;                                                      \
        _Pragma("omp parallel for num_threads(num_threads) if (rows > 1)")                    \
        for (int r = 0; r < rows; r++)                                                        \
            rms_norm_row(x, residual, weight, out, r, x_stride, hidden, eps, IS_BF16);        \
        return 0;                                                                             \
    }                                                                                         \
    int silu_mul_##SUFFIX(const void *x, void *out, int rows, int inter, int num_threads) {   \
        _Pragma("omp parallel for num_threads(num_threads) if (rows > 1)")                    \
        for (int r = 0; r < rows; r++) silu_mul_row(x, out, r, inter, IS_BF16);               \
        return 0;                                                                             \
    }                                                                                         \
    int rotary_##SUFFIX(void *x, int64_t x_stride, const void *cos, const void *sin, int rows, \
                        int heads, int head_dim, int num_threads) {                           \
        _Pragma("omp parallel for num_threads(num_threads) if (rows > 1)")                    \
        for (int r = 0; r < rows; r++)                                                        \
            rotary_row(x, cos, sin, r, x_stride, heads, head_dim, IS_BF16);                   \
        return 0;                                                                             \
    }

ELEMENTWISE(bf16, 1)
ELEMENTWISE(f32, 0)

