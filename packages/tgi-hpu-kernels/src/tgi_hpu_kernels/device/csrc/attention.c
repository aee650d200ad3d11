/* Paged attention of the native CPU kernels (see common.h; built by device/cpu_native.py).
 *
 * paged_attention_{bf16,f32}: causal attention of packed query rows over keys and values
 * read in place from the paged KV cache (which already holds this step's keys), for decode
 * (one query per sequence), prefill and prefill over a cached prefix alike: no gather, no
 * padded grid, no materialised scores. Cache layout per layer:
 * [num_blocks + 1, block_size, kv_heads, head_dim]; key t of sequence b lives at slot
 * tables[b][t / block_size] * block_size + t % block_size. Sequence b has query_lens[b]
 * query rows from row query_starts[b], at positions seq_lens[b] - query_lens[b] onwards;
 * the query at position p attends to keys [max(0, p + 1 - window), p] (window 0: all).
 * A positive softcap caps every scaled score as softcap * tanh(score / softcap) (Gemma 2).
 * Work items are tiles of queries of one sequence; within one, keys are read chunk by chunk
 * (every head of a slot is contiguous, so the hardware streams them) and the softmax is
 * computed online (flash-attention style), in float32.
 *
 * What does not live here: which path runs (device/cpu.py), building tables (step_inputs),
 * the other kernels (elementwise.c, linear.c).
 */
#include "common.h"

#define CHUNK 64
#define TILE_FLOATS 16384 /* accumulators of one work item: queries * heads * head_dim */
#define MAX_TILE 16

typedef struct {
    const void *q;
    int64_t q_stride; /* elements between query rows */
    const void *new_k, *new_v; /* this step's [rows, kv_heads, head_dim] keys and values */
    int64_t new_k_stride, new_v_stride;
    const int64_t *slots; /* [rows] cache slot of each new key */
    void *k_cache, *v_cache;
    const int32_t *tables;
    int64_t table_stride;
    const int32_t *seq_lens, *query_starts, *query_lens;
    void *out; /* [rows, heads * head_dim], contiguous */
    int heads, kv_heads, head_dim, block_size, window;
    float scale, softcap; /* softcap 0: scores are not capped */
} Problem;

static inline int64_t slot_of(const int32_t *table, int t, int block_size) {
    return (int64_t)table[t / block_size] * block_size + t % block_size;
}

/* Soft-capped scores, in place (a no-op without a cap). */
static inline void cap_scores(float *scores, int count, float softcap) {
    if (softcap <= 0.0f) return;
    for (int j = 0; j < count; j++) scores[j] = softcap * tanhf(scores[j] / softcap);
}

/* ---- portable path (float32, or bf16 where AVX512-BF16 is missing): one query row ------ */

/* A row as float32: read in place (float32), or widened into `dst` (bf16). */
static inline __attribute__((always_inline)) const float *load_row(const void *src,
                                                                   int64_t offset, float *dst,
                                                                   int n, int is_bf16) {
    if (!is_bf16) return (const float *)src + offset;
    const uint16_t *s = (const uint16_t *)src + offset;
    for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    return dst;
}

/* Dot product with 16 independent partial sums (vectorizes, no long serial chain). */
static inline float dot(const float *a, const float *b, int n) {
    float part[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) part[l] += a[i + l] * b[i + l];
    for (; i < n; i++) part[i & 15] += a[i] * b[i];
    for (int width = 8; width > 0; width /= 2)
        for (int l = 0; l < width; l++) part[l] += part[l + width];
    return part[0];
}

/* The query row at token `row` and position `pos` of sequence b, query heads [qh_lo, qh_hi)
 * (those of a range of KV heads). */
static inline __attribute__((always_inline)) void attend_row_portable(const Problem *pb, int b,
                                                                      int64_t row, int pos,
                                                                      int qh_lo, int qh_hi,
                                                                      int is_bf16) {
    const int heads = pb->heads, head_dim = pb->head_dim, group = heads / pb->kv_heads;
    const int64_t slot_stride = (int64_t)pb->kv_heads * head_dim;
    const int32_t *table = pb->tables + b * pb->table_stride;
    const int start = (pb->window > 0 && pos + 1 > pb->window) ? pos + 1 - pb->window : 0;
    float q_buffer[MAX_ROW], acc[MAX_ROW], kv_row[MAX_HEAD_DIM];
    float scores[CHUNK], row_max[MAX_HEADS], row_sum[MAX_HEADS];
    const float *qf = load_row(pb->q, row * pb->q_stride, q_buffer, heads * head_dim, is_bf16);
    memset(acc, 0, sizeof(float) * (size_t)(heads * head_dim));
    for (int qh = qh_lo; qh < qh_hi; qh++) row_max[qh] = -INFINITY, row_sum[qh] = 0.0f;
    for (int c0 = start; c0 <= pos; c0 += CHUNK) {
        const int count = pos + 1 - c0 < CHUNK ? pos + 1 - c0 : CHUNK;
        for (int qh = qh_lo; qh < qh_hi; qh++) {
            const int64_t head_offset = (int64_t)(qh / group) * head_dim;
            float m = row_max[qh];
            for (int j = 0; j < count; j++) {
                const int64_t slot = slot_of(table, c0 + j, pb->block_size);
                const float *k = load_row(pb->k_cache, slot * slot_stride + head_offset, kv_row,
                                          head_dim, is_bf16);
                scores[j] = dot(qf + qh * head_dim, k, head_dim) * pb->scale;
            }
            cap_scores(scores, count, pb->softcap);
            for (int j = 0; j < count; j++) m = scores[j] > m ? scores[j] : m;
            const float correction = exp_approx(row_max[qh] - m);
            float total = 0.0f;
            for (int j = 0; j < count; j++) total += (scores[j] = exp_approx(scores[j] - m));
            row_sum[qh] = row_sum[qh] * correction + total;
            row_max[qh] = m;
            float *a = acc + qh * head_dim;
            for (int d = 0; d < head_dim; d++) a[d] *= correction;
            for (int j = 0; j < count; j++) {
                const int64_t slot = slot_of(table, c0 + j, pb->block_size);
                const float *v = load_row(pb->v_cache, slot * slot_stride + head_offset, kv_row,
                                          head_dim, is_bf16);
                for (int d = 0; d < head_dim; d++) a[d] += scores[j] * v[d];
            }
        }
    }
    for (int i = qh_lo * head_dim; i < qh_hi * head_dim; i++) {
        const float value = acc[i] / row_sum[i / head_dim];
        if (is_bf16)
            ((uint16_t *)pb->out)[row * heads * head_dim + i] = f32_to_bf16(value);
        else
            ((float *)pb->out)[row * heads * head_dim + i] = value;
    }
}

/* ---- AVX512-BF16 path (bf16, head_dim a multiple of 32): a tile of query rows ---------- */

#if HAVE_FAST_BF16

/* Scaled scores of one query head against `count` keys (rows at k + slots[j]). */
static inline __attribute__((always_inline)) void head_scores(const uint16_t *q, const uint16_t *k,
                                                              const int64_t *slots, int count,
                                                              const int nv, float scale,
                                                              float *scores) {
    __m512bh qv[MAX_HEAD_DIM / 32];
    for (int i = 0; i < nv; i++) qv[i] = (__m512bh)_mm512_loadu_si512(q + 32 * i);
    const __m128 scale4 = _mm_set1_ps(scale);
    int j = 0;
    for (; j + 4 <= count; j += 4) {
        __m512 sum[4];
        for (int r = 0; r < 4; r++) {
            sum[r] = _mm512_setzero_ps();
            for (int i = 0; i < nv; i++)
                sum[r] = _mm512_dpbf16_ps(sum[r], qv[i],
                                          (__m512bh)_mm512_loadu_si512(k + slots[j + r] + 32 * i));
        }
        _mm_storeu_ps(scores + j, _mm_mul_ps(reduce4(sum[0], sum[1], sum[2], sum[3]), scale4));
    }
    for (; j < count; j++) {
        __m512 sum = _mm512_setzero_ps();
        for (int i = 0; i < nv; i++)
            sum = _mm512_dpbf16_ps(sum, qv[i], (__m512bh)_mm512_loadu_si512(k + slots[j] + 32 * i));
        scores[j] = _mm512_reduce_add_ps(sum) * scale;
    }
}

/* Softmax weights of one query head over a chunk, in place; returns the rescale factor of
 * the head's running accumulator (online softmax). */
static inline float chunk_softmax(float *s, int count, float *row_max, float *row_sum) {
    __m512 m16 = _mm512_set1_ps(*row_max);
    for (int j = 0; j < count; j += 16)
        m16 = _mm512_mask_max_ps(m16, tail_mask(count - j), m16, _mm512_loadu_ps(s + j));
    const float m = _mm512_reduce_max_ps(m16);
    const __m512 mv = _mm512_set1_ps(m);
    __m512 total = _mm512_setzero_ps();
    for (int j = 0; j < count; j += 16) {
        const __m512 e = _mm512_maskz_mov_ps(
            tail_mask(count - j), exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv)));
        _mm512_storeu_ps(s + j, e);
        total = _mm512_add_ps(total, e);
    }
    const float correction = exp_approx(*row_max - m);
    *row_sum = *row_sum * correction + _mm512_reduce_add_ps(total);
    *row_max = m;
    return correction;
}

/* Every line of a slot (all KV heads) in flight: the loops would otherwise wait on each row. */
#define PREFETCH_SLOT(offset)                                                          \
    for (int64_t line = 0; line < slot_stride; line += 32) {                           \
        _mm_prefetch((const char *)(k_cache + (offset) + line), _MM_HINT_T0);          \
        _mm_prefetch((const char *)(v_cache + (offset) + line), _MM_HINT_T0);          \
    }

/* Queries [q0, q0 + nq) of sequence b, head_dim = 32 * NV: AVX512-BF16 dot products for the
 * scores (four keys per horizontal reduction), float32 FMAs for the values. Per chunk and
 * KV head, the values are widened to float32 once into an L1 tile that every query and
 * query head of the tile reads; the keys of the chunk stay in L1/L2 across queries. */
static inline __attribute__((always_inline)) void attend_tile_avx512(const Problem *pb, int b,
                                                                     int q0, int nq, int h_lo,
                                                                     int h_hi, const int nv) {
    const int head_dim = 32 * nv, heads = pb->heads, group = heads / pb->kv_heads;
    const int qh_lo = h_lo * group, qh_hi = h_hi * group;
    const int64_t slot_stride = (int64_t)pb->kv_heads * head_dim;
    const int32_t *table = pb->tables + b * pb->table_stride;
    const int first_pos = pb->seq_lens[b] - pb->query_lens[b] + q0;
    const int64_t first_row = pb->query_starts[b] + q0;
    const int window = pb->window;
    const uint16_t *k_cache = pb->k_cache, *v_cache = pb->v_cache, *q = pb->q;
    float scores[CHUNK] __attribute__((aligned(64)));
    float values[CHUNK * MAX_HEAD_DIM] __attribute__((aligned(64)));
    float row_max[MAX_TILE * MAX_HEADS], row_sum[MAX_TILE * MAX_HEADS];
    __m512 acc[TILE_FLOATS / 16];
    int64_t slots[CHUNK];
    for (int qi = 0; qi < nq; qi++)
        for (int s = qi * heads + qh_lo; s < qi * heads + qh_hi; s++) {
            row_max[s] = -INFINITY;
            row_sum[s] = 0.0f;
            for (int i = 0; i < 2 * nv; i++) acc[s * 2 * nv + i] = _mm512_setzero_ps();
        }
    const int lo = (window > 0 && first_pos + 1 > window) ? first_pos + 1 - window : 0;
    const int hi = first_pos + nq; /* keys [lo, hi) */
    for (int c0 = lo; c0 < hi; c0 += CHUNK) {
        const int count = hi - c0 < CHUNK ? hi - c0 : CHUNK;
        for (int j = 0; j < count; j++) {
            slots[j] = slot_of(table, c0 + j, pb->block_size) * slot_stride;
            PREFETCH_SLOT(slots[j]);
        }
        for (int t = c0 + CHUNK; t < c0 + 3 * CHUNK && t < hi; t++)
            PREFETCH_SLOT(slot_of(table, t, pb->block_size) * slot_stride);
        for (int h = h_lo; h < h_hi; h++) {
            const uint16_t *k = k_cache + (int64_t)h * head_dim;
            const uint16_t *v = v_cache + (int64_t)h * head_dim;
            for (int j = 0; j < count; j++)
                for (int i = 0; i < 2 * nv; i++)
                    _mm512_store_ps(values + j * head_dim + 16 * i,
                                    bf16x16_to_f32(v + slots[j] + 16 * i));
            for (int qi = 0; qi < nq; qi++) {
                const int pos = first_pos + qi;
                const int j_hi = pos + 1 - c0 < count ? pos + 1 - c0 : count;
                int j_lo = window > 0 ? pos + 1 - window - c0 : 0;
                j_lo = j_lo > 0 ? j_lo : 0;
                if (j_lo >= j_hi) continue;
                const uint16_t *q_row = q + (first_row + qi) * pb->q_stride;
                for (int qh = h * group; qh < (h + 1) * group; qh++) {
                    const int s = qi * heads + qh;
                    head_scores(q_row + qh * head_dim, k, slots + j_lo, j_hi - j_lo, nv, pb->scale,
                                scores);
                    cap_scores(scores, j_hi - j_lo, pb->softcap);
                    const __m512 correction = _mm512_set1_ps(
                        chunk_softmax(scores, j_hi - j_lo, row_max + s, row_sum + s));
                    /* Two keys per step into two accumulator sets: twice the FMA chains in
                     * flight (one chain per set would wait on the FMA latency). */
                    __m512 a[MAX_HEAD_DIM / 16], b[MAX_HEAD_DIM / 16];
                    for (int i = 0; i < 2 * nv; i++) {
                        a[i] = _mm512_mul_ps(acc[s * 2 * nv + i], correction);
                        b[i] = _mm512_setzero_ps();
                    }
                    int j = j_lo;
                    for (; j + 2 <= j_hi; j += 2) {
                        const __m512 p0 = _mm512_set1_ps(scores[j - j_lo]);
                        const __m512 p1 = _mm512_set1_ps(scores[j + 1 - j_lo]);
                        for (int i = 0; i < 2 * nv; i++) {
                            a[i] = _mm512_fmadd_ps(
                                p0, _mm512_load_ps(values + j * head_dim + 16 * i), a[i]);
                            b[i] = _mm512_fmadd_ps(
                                p1, _mm512_load_ps(values + (j + 1) * head_dim + 16 * i), b[i]);
                        }
                    }
                    if (j < j_hi) {
                        const __m512 p0 = _mm512_set1_ps(scores[j - j_lo]);
                        for (int i = 0; i < 2 * nv; i++)
                            a[i] = _mm512_fmadd_ps(
                                p0, _mm512_load_ps(values + j * head_dim + 16 * i), a[i]);
                    }
                    for (int i = 0; i < 2 * nv; i++) acc[s * 2 * nv + i] = _mm512_add_ps(a[i], b[i]);
                }
            }
        }
    }
    uint16_t *out = (uint16_t *)pb->out + first_row * heads * head_dim;
    for (int qi = 0; qi < nq; qi++)
        for (int s = qi * heads + qh_lo; s < qi * heads + qh_hi; s++) {
            const __m512 inverse = _mm512_set1_ps(1.0f / row_sum[s]);
            for (int i = 0; i < 2 * nv; i++) {
                const __m512 value = _mm512_mul_ps(acc[s * 2 * nv + i], inverse);
                _mm256_storeu_si256((__m256i *)(out + s * head_dim + 16 * i),
                                    (__m256i)_mm512_cvtneps_pbh(value));
            }
        }
}

/* Fully unrolled bodies for the common head sizes. */
static void attend_tile_fast(const Problem *pb, int b, int q0, int nq, int h_lo, int h_hi) {
    switch (pb->head_dim) {
        case 64: attend_tile_avx512(pb, b, q0, nq, h_lo, h_hi, 2); break;
        case 128: attend_tile_avx512(pb, b, q0, nq, h_lo, h_hi, 4); break;
        default: attend_tile_avx512(pb, b, q0, nq, h_lo, h_hi, pb->head_dim / 32); break;
    }
}
#endif

/* ---- entry points --------------------------------------------------------------------- */

/* One work item: queries [q0, q0 + tile) of sequence b (fewer at its end), KV heads
 * [h, h + 1) when heads are split across items, else all of them. */
typedef struct {
    int32_t b, q0, h;
} Item;

static void run_item(const Problem *pb, Item item, int tile, int split_heads, int fast,
                     int is_bf16) {
    const int q_len = pb->query_lens[item.b];
#if HAVE_FAST_BF16
    if (fast) {
        const int nq = q_len - item.q0 < tile ? q_len - item.q0 : tile;
        const int h_hi = split_heads ? item.h + 1 : pb->kv_heads;
        attend_tile_fast(pb, item.b, item.q0, nq, split_heads ? item.h : 0, h_hi);
        return;
    }
#endif
    (void)fast, (void)tile; /* portable items: one query row, all heads or one KV head's */
    const int64_t row = pb->query_starts[item.b] + item.q0;
    const int pos = pb->seq_lens[item.b] - q_len + item.q0;
    const int group = pb->heads / pb->kv_heads;
    const int qh_lo = split_heads ? item.h * group : 0;
    const int qh_hi = split_heads ? qh_lo + group : pb->heads;
    if (is_bf16)
        attend_row_portable(pb, item.b, row, pos, qh_lo, qh_hi, 1);
    else
        attend_row_portable(pb, item.b, row, pos, qh_lo, qh_hi, 0);
}

/* Stores this step's keys and values at their slots (before any query reads them). */
static void write_new_kv(const Problem *pb, int64_t rows, int num_threads, size_t item_size) {
    const int64_t slot_stride = (int64_t)pb->kv_heads * pb->head_dim;
    const size_t bytes = (size_t)slot_stride * item_size;
#pragma omp parallel for num_threads(num_threads) if (rows > 64)
    for (int64_t r = 0; r < rows; r++) {
        const size_t dst = (size_t)(pb->slots[r] * slot_stride) * item_size;
        memcpy((char *)pb->k_cache + dst,
               (const char *)pb->new_k + (size_t)(r * pb->new_k_stride) * item_size, bytes);
        memcpy((char *)pb->v_cache + dst,
               (const char *)pb->new_v + (size_t)(r * pb->new_v_stride) * item_size, bytes);
    }
}

/* Returns 0; -1 when the sizes exceed this file's limits, -2 when out of memory. */
static int paged_attention(const Problem *pb, int n, int64_t new_rows, int num_threads,
                           int is_bf16) {
    const int heads = pb->heads, head_dim = pb->head_dim, kv_heads = pb->kv_heads;
    if (head_dim > MAX_HEAD_DIM || heads > MAX_HEADS || heads * head_dim > MAX_ROW ||
        kv_heads <= 0 || heads % kv_heads)
        return -1;
    write_new_kv(pb, new_rows, num_threads, is_bf16 ? 2 : 4);
    const int fast = HAVE_FAST_BF16 && is_bf16 && head_dim % 32 == 0;
    int tile = fast ? TILE_FLOATS / (heads * head_dim) : 1;
    tile = tile > MAX_TILE ? MAX_TILE : tile;
    int64_t num_tiles = 0;
    for (int b = 0; b < n; b++) num_tiles += (pb->query_lens[b] + tile - 1) / tile;
    /* Too few tiles to keep every thread busy (small decode batches): one item per KV head. */
    const int split_heads = num_tiles < 2 * num_threads;
    const int per_tile = split_heads ? kv_heads : 1;
    Item *items = malloc(sizeof(Item) * (size_t)(num_tiles * per_tile + 1));
    if (!items) return -2;
    /* Last tiles first: they see the most keys, and dynamic scheduling balances the rest. */
    int64_t count = 0;
    for (int b = 0; b < n; b++)
        for (int q0 = (pb->query_lens[b] - 1) / tile * tile; q0 >= 0; q0 -= tile)
            for (int h = 0; h < per_tile; h++) items[count++] = (Item){b, q0, h};
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t i = 0; i < count; i++) run_item(pb, items[i], tile, split_heads, fast, is_bf16);
    free(items);
    return 0;
}

/* Writes `new_rows` keys/values (rows of new_k/new_v) at `slots`, then attends: q rows of
 * n sequences described by tables, seq_lens, query_starts and query_lens. */
#define PAGED_ATTENTION(NAME, IS_BF16)                                                         \
    int NAME(const void *q, int64_t q_stride, const void *new_k, int64_t new_k_stride,        \
             const void *new_v, int64_t new_v_stride, const int64_t *slots, int64_t new_rows,  \
             void *k_cache, void *v_cache, const int32_t *tables, int64_t table_stride,        \
             const int32_t *seq_lens, const int32_t *query_starts, const int32_t *query_lens,  \
             void *out, int n, int heads, int kv_heads, int head_dim, int block_size,          \
             int window, float scale, float softcap, int num_threads) {                        \
        const Problem pb = {q,          q_stride,     new_k,        new_v,      new_k_stride, \
                            new_v_stride, slots,      k_cache,      v_cache,    tables,       \
                            table_stride, seq_lens,   query_starts, query_lens, out,          \
                            heads,        kv_heads,   head_dim,     block_size, window,       \
                            scale,        softcap};                                            \
        return paged_attention(&pb, n, new_rows, num_threads, IS_BF16);                        \
    }

PAGED_ATTENTION(paged_attention_bf16, 1)
PAGED_ATTENTION(paged_attention_f32, 0)
