/* A whole Llama-style decoder layer in one native call (bf16, decode-sized batches), so a
 * decode step costs one Python -> C transition per layer instead of a dozen: RMSNorm (fused
 * with the residual add), merged QKV projection, rotary, paged attention (writing the new
 * keys/values), output projection, RMSNorm (+ residual), merged gate/up projection,
 * SiLU-and-mul, down projection. Each stage is the same kernel the per-op path calls, so the
 * two paths give the same bits. Buffers are the caller's: nothing is allocated here.
 */
#include "common.h"

/* What stays the same for a layer across steps: its weights (bias may be NULL) and caches. */
typedef struct {
    const uint16_t *input_norm, *qkv_weight, *qkv_bias, *o_weight, *o_bias;
    const uint16_t *post_norm, *gate_up_weight, *gate_up_bias, *down_weight, *down_bias;
    void *k_cache, *v_cache;
    float eps, scale;
    int32_t window; /* 0: none */
} LayerWeights;

/* What stays the same for every layer of one step: sizes, metadata and scratch buffers. */
typedef struct {
    int64_t rows;
    const uint16_t *cos, *sin; /* [rows, head_dim] */
    const int64_t *slots;
    const int32_t *tables;
    int64_t table_stride;
    const int32_t *seq_lens, *query_starts, *query_lens;
    int32_t num_seqs;
    uint16_t *normed;  /* [rows, hidden] */
    uint16_t *qkv;     /* [rows, (heads + 2 kv_heads) head_dim] */
    uint16_t *attn;    /* [rows, heads head_dim] */
    uint16_t *gate_up; /* [rows, 2 inter] */
    uint16_t *act;     /* [rows, inter] */
    int32_t hidden, heads, kv_heads, head_dim, inter, block_size, num_threads;
} StepArgs;

/* hidden: the previous layer's MLP output (or, with first, the embeddings); residual: the
 * residual stream, updated in place; out: this layer's MLP output. Returns 0 or a status. */
int decoder_layer_bf16(const StepArgs *s, const LayerWeights *w, const uint16_t *hidden,
                       uint16_t *residual, uint16_t *out, int first) {
    const int rows = (int)s->rows, size = s->hidden, threads = s->num_threads;
    const int qkv_width = (s->heads + 2 * s->kv_heads) * s->head_dim;
    const int q_width = s->heads * s->head_dim, kv_width = s->kv_heads * s->head_dim;
    int status = 0;
    if (first) {
        memcpy(residual, hidden, sizeof(uint16_t) * (size_t)rows * (size_t)size);
        status |= rms_norm_bf16(residual, size, NULL, w->input_norm, s->normed, rows, size,
                                w->eps, threads);
    } else {
        status |= rms_norm_bf16(hidden, size, residual, w->input_norm, s->normed, rows, size,
                                w->eps, threads);
    }
    status |= linear_bf16(s->normed, size, w->qkv_weight, w->qkv_bias, s->qkv, qkv_width, rows,
                          qkv_width, size, threads);
    status |= rotary_bf16(s->qkv, qkv_width, s->cos, s->sin, rows, s->heads + s->kv_heads,
                          s->head_dim, threads);
    status |= paged_attention_bf16(
        s->qkv, qkv_width, s->qkv + q_width, qkv_width, s->qkv + q_width + kv_width, qkv_width,
        s->slots, rows, w->k_cache, w->v_cache, s->tables, s->table_stride, s->seq_lens,
        s->query_starts, s->query_lens, s->attn, s->num_seqs, s->heads, s->kv_heads,
        s->head_dim, s->block_size, w->window, w->scale, 0.0f, threads);
    status |= linear_bf16(s->attn, q_width, w->o_weight, w->o_bias, s->normed, size, rows, size,
                          q_width, threads);
    status |= rms_norm_bf16(s->normed, size, residual, w->post_norm, s->normed, rows, size,
                            w->eps, threads);
    status |= linear_bf16(s->normed, size, w->gate_up_weight, w->gate_up_bias, s->gate_up,
                          2 * s->inter, rows, 2 * s->inter, size, threads);
    status |= silu_mul_bf16(s->gate_up, s->act, rows, s->inter, threads);
    status |= linear_bf16(s->act, s->inter, w->down_weight, w->down_bias, out, size, rows, size,
                          s->inter, threads);
    return status;
}
