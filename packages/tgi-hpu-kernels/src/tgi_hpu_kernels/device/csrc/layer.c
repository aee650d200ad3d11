/* A whole Llama-style decoder layer in one native call (bf16, decode-sized batches), so a
 * decode step costs one Python -> C transition per layer instead of a dozen: RMSNorm (fused
 * with the residual add), merged QKV projection, rotary, paged attention (writing the new
 * keys/values), output projection, RMSNorm (+ residual), merged gate/up projection,
 * SiLU-and-mul, down projection. Each stage is the same kernel the per-op path calls, so the
 * two paths give the same bits. Buffers are the caller's: nothing is allocated here.
 */
#include "common.h"

/* The weight-only quantized kernels (linear_quant.c). */
int linear_q4_f32(const float *x, int64_t x_stride, const uint8_t *q, const float *scales,
                  const float *mins, const float *bias, float *y, int64_t y_stride, int rows,
                  int outputs, int inputs, int group, int num_threads);
int linear_q8_f32(const float *x, int64_t x_stride, const int8_t *q, const float *scales,
                  const float *bias, float *y, int64_t y_stride, int rows, int outputs,
                  int inputs, int group, int num_threads);
/* And their AMX forms for bf16 rows, with bf16 outputs (linear_quant_amx.c). */
int linear_q4_amx(const uint16_t *x, int64_t x_stride, const uint8_t *q, const float *scales,
                  const float *mins, const float *bias, uint16_t *y, int64_t y_stride, int rows,
                  int outputs, int inputs, int group, int num_threads);
int linear_q8_amx(const uint16_t *x, int64_t x_stride, const int8_t *q, const float *scales,
                  const float *bias, uint16_t *y, int64_t y_stride, int rows, int outputs,
                  int inputs, int group, int num_threads);

/* One projection's weights: dense bf16 [outputs, inputs] (bits 0; bf16 bias), or int4 codes
 * with mins (bits 4) / int8 codes (bits 8), float32 scales per `group` inputs and a float32
 * bias, as linear_quant.c takes them. bias may be NULL. */
typedef struct {
    int32_t bits, group;
    const void *weight, *bias;
    const float *scales, *mins;
} Projection;

/* What stays the same for a layer across steps: its weights and caches. */
typedef struct {
    const uint16_t *input_norm, *post_norm;
    Projection qkv, o, gate_up, down;
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
    float *wide_in;    /* [rows, widest input]: quantized projections' float32 inputs */
    float *wide_out;   /* [rows, widest output]: and outputs (NULL when every one is dense) */
    int32_t hidden, heads, kv_heads, head_dim, inter, block_size, num_threads;
    int32_t quant_amx; /* quantized projections take the AMX kernel (bf16 rows in) */
} StepArgs;

/* y = x @ w^T + bias for the step's rows. A quantized projection does what the per-op path
 * does (x.float(), the float32 kernel, .to(bfloat16); or the AMX kernel, bf16 in and out),
 * so both give the same bits. */
static int project(const StepArgs *s, const Projection *p, const uint16_t *x, int64_t x_stride,
                   uint16_t *y, int outputs, int inputs) {
    const int rows = (int)s->rows, threads = s->num_threads;
    if (p->bits == 0)
        return linear_bf16(x, x_stride, p->weight, p->bias, y, outputs, rows, outputs, inputs,
                           threads);
    if (p->bits != 4 && p->bits != 8) return -1;
    if (s->quant_amx)
        return p->bits == 4 ? linear_q4_amx(x, x_stride, p->weight, p->scales, p->mins, p->bias, y,
                                            outputs, rows, outputs, inputs, p->group, threads)
                            : linear_q8_amx(x, x_stride, p->weight, p->scales, p->bias, y, outputs,
                                            rows, outputs, inputs, p->group, threads);
    if (!s->wide_in || !s->wide_out) return -1;
    for (int64_t r = 0; r < rows; r++)
        for (int i = 0; i < inputs; i++)
            s->wide_in[r * inputs + i] = bf16_to_f32(x[r * x_stride + i]);
    const int status =
        p->bits == 4 ? linear_q4_f32(s->wide_in, inputs, p->weight, p->scales, p->mins, p->bias,
                                     s->wide_out, outputs, rows, outputs, inputs, p->group, threads)
                     : linear_q8_f32(s->wide_in, inputs, p->weight, p->scales, p->bias, s->wide_out,
                                     outputs, rows, outputs, inputs, p->group, threads);
    const int64_t count = (int64_t)rows * outputs;
    for (int64_t i = 0; i < count; i++) y[i] = f32_to_bf16(s->wide_out[i]);
    return status;
}

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
    status |= project(s, &w->qkv, s->normed, size, s->qkv, qkv_width, size);
    status |= rotary_bf16(s->qkv, qkv_width, s->cos, s->sin, rows, s->heads + s->kv_heads,
                          s->head_dim, threads);
    status |= paged_attention_bf16(
        s->qkv, qkv_width, s->qkv + q_width, qkv_width, s->qkv + q_width + kv_width, qkv_width,
        s->slots, rows, w->k_cache, w->v_cache, s->tables, s->table_stride, s->seq_lens,
        s->query_starts, s->query_lens, s->attn, s->num_seqs, s->heads, s->kv_heads,
        s->head_dim, s->block_size, w->window, w->scale, 0.0f, threads);
    status |= project(s, &w->o, s->attn, q_width, s->normed, size, q_width);
    status |= rms_norm_bf16(s->normed, size, residual, w->post_norm, s->normed, rows, size,
                            w->eps, threads);
    status |= project(s, &w->gate_up, s->normed, size, s->gate_up, 2 * s->inter, size);
    status |= silu_mul_bf16(s->gate_up, s->act, rows, s->inter, threads);
    status |= project(s, &w->down, s->act, s->inter, out, size, s->inter);
    return status;
}
