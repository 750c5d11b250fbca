/* ops.h: every op of the model once, forward and backward, as a table of function pointers.
 * The model calls ops only through a Backend, chosen once at start, and never asks which device
 * it runs on. Pointers are host memory for the CPU backend and device memory for CUDA.
 *
 * Shapes and layouts (N = B*T tokens, row-major, "+=" means gradients accumulate):
 *   activations [N, C]; q [N, H*D]; k, v [N, KVH*D] (heads contiguous inside a row, as HF's view
 *   of q_proj's output); linear weights [out, in] as in torch.nn.Linear.
 * Backward functions ACCUMULATE into weight/bias gradients (so micro-batches sum) and OVERWRITE
 * input gradients unless their comment says otherwise.
 *
 * Storage (DESIGN.md, numerics): parameters, their gradients, the residual stream (the
 * embedding's output, each layer's input and output, and the gradient flowing along it) and
 * every statistic (rstd, lse, losses) are fp32 in every backend. The other activations and
 * their gradients (norm outputs, q, k, v, attention output, gate, up, the MLP's activation,
 * projection outputs, logits) are `Act` tensors, stored in the backend's activation type:
 * act_size(be) bytes an element, 4 (fp32) on the CPU and in the CUDA backend's fp32 modes, 2
 * (bf16) in its bf16 mode. Ops read and compute in fp32 whatever the storage. */
#ifndef DSTRAIN_OPS_H
#define DSTRAIN_OPS_H

/* The most ranges one Backend.sum_squares_batch call takes. */
#define SUM_SQUARES_BATCH 64

#include <stddef.h>
#include <stdint.h>

/* An activation tensor in the backend's storage type (above): only the backend reads its
 * elements; the caller moves it by act_size(be) bytes an element. */
typedef void Act;

/* The most routed experts a layer may have (the op's scratch lives on the stack). */
#define MOE_MAX_EXPERTS 4096

/* How a mixture-of-experts layer chooses its experts (DeepSeek V2 and V3, as transformers). */
typedef struct MoeRouting {
    int experts;       /* E */
    int top_k;         /* k */
    int sigmoid;       /* scores: 1 sigmoid (V3), 0 softmax (V2) */
    int groups;        /* experts in `groups` equal groups; only the best topk_groups groups are
                        * eligible (1: no group limit) */
    int topk_groups;
    int group_by_top2; /* a group ranks by the sum of its two best scores (V3's noaux_tc), else
                        * by its best (V2's group_limited_greedy) */
    int normalize;     /* the chosen weights are divided by their sum (+ 1e-20) */
    float scaling;     /* routed_scaling_factor, applied last */
} MoeRouting;

typedef struct Backend Backend;

struct Backend {
    const char *name;
    /* The backend's own state (its device, options, streams, workspaces, plans), made with it by
     * backend_create and given to every op with the table; NULL in the CPU backend, which has
     * none. */
    void *ctx;

    /* Bytes of one Act element: 4 (fp32) or 2 (bf16). */
    size_t (*act_size)(const Backend *be);

    /* out[M,N] = inp[M,K] @ weight[N,K]^T + bias[N] (bias may be NULL). */
    void (*matmul_forward)(const Backend *be, Act *out, const Act *inp, const float *weight,
                           const float *bias, int M, int K, int N);
    /* dinp[M,K] = dout @ weight (if dinp != NULL; overwrite, or += when accumulate: the three
     * projections reading one normed input sum their input gradients), dweight[N,K] += dout^T @
     * inp, dbias[N] += column sums of dout (if dbias != NULL). */
    void (*matmul_backward)(const Backend *be, Act *dinp, float *dweight, float *dbias,
                            const Act *dout, const Act *inp, const float *weight, int M, int K,
                            int N, int accumulate);

    /* out = inp / rms(inp) * weight over the last dim C; rstd[M] saved for backward. inp is the
     * residual stream (fp32). */
    void (*rmsnorm_forward)(const Backend *be, Act *out, float *rstd, const float *inp,
                            const float *weight, int M, int C, float eps);
    /* sum = a + b (add's residual add), then out, rstd = rmsnorm_forward of sum: the two in one
     * pass over each row, out and rstd the bits rmsnorm_forward gives for sum (selective
     * checkpointing recomputes them so). sum may be a. */
    void (*add_rmsnorm_forward)(const Backend *be, float *sum, Act *out, float *rstd,
                                const float *a, const Act *b, const float *weight, int M, int C,
                                float eps);
    /* dinp[M,C] += (accumulates: it is the residual stream's gradient), dweight[C] += ; when
     * dinp_act is not NULL it receives the updated dinp as an Act (the next matmul backward's
     * dout). */
    void (*rmsnorm_backward)(const Backend *be, float *dinp, Act *dinp_act, float *dweight,
                             const Act *dout, const float *inp, const float *weight,
                             const float *rstd, int M, int C);

    /* Rotary embedding in the HF rotate-half layout, in place on x[B*T, H*D]; pos_cos/pos_sin
     * are [T, D/2] tables (position t, frequency i). backward applies the inverse rotation to
     * the gradient, in place. */
    void (*rope_forward)(const Backend *be, Act *x, const float *pos_cos, const float *pos_sin,
                         int B, int T, int H, int D);
    void (*rope_backward)(const Backend *be, Act *dx, const float *pos_cos, const float *pos_sin,
                          int B, int T, int H, int D);

    /* Causal attention with grouped-query heads (head h uses kv head h / (H / KVH)), scale
     * 1/sqrt(D). out[N, H*D]; lse[B, H, T] is the log-sum-exp of each score row, saved so that
     * backward recomputes probabilities without storing the T x T matrix. */
    void (*attention_forward)(const Backend *be, Act *out, float *lse, const Act *q, const Act *k,
                              const Act *v, int B, int T, int H, int KVH, int D);
    /* dq, dk, dv overwritten. */
    void (*attention_backward)(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                               const Act *out, const float *lse, const Act *q, const Act *k,
                               const Act *v, int B, int T, int H, int KVH, int D);

    /* out = silu(gate) * up, n elements. backward overwrites dgate, dup. */
    void (*swiglu_forward)(const Backend *be, Act *out, const Act *gate, const Act *up, size_t n);
    void (*swiglu_backward)(const Backend *be, Act *dgate, Act *dup, const Act *dout,
                            const Act *gate, const Act *up, size_t n);

    /* out[N, C] = table[tokens[i]]; backward: dtable[tokens[i]] += dout[i] (the residual
     * stream and its gradient: fp32). */
    void (*embedding_forward)(const Backend *be, float *out, const int32_t *tokens,
                              const float *table, int N, int C);
    void (*embedding_backward)(const Backend *be, float *dtable, const float *dout,
                               const int32_t *tokens, int N, int C);

    /* Softmax cross-entropy over logits[N, V] with targets[N] and per-token weights[N]
     * (0 = not predicted). losses[i] = -log softmax(logits[i])[targets[i]] (0 where weight 0).
     * When write_grad, logits are overwritten in place by their gradient weights[i] *
     * (softmax - onehot), which the caller scales so that the sum is the mean loss. */
    void (*cross_entropy)(const Backend *be, float *losses, Act *logits, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad);

    /* out[i] = a[i] + b[i]: the residual add of a projection's output b. */
    void (*add)(const Backend *be, float *out, const float *a, const Act *b, size_t n);

    /* sum of squares of x[n], in double. */
    double (*sum_squares)(const Backend *be, const float *x, size_t n);
    /* sums[i] = sum_squares(xs[i], ns[i]) for i < count <= SUM_SQUARES_BATCH, the same bits,
     * with one wait for the device instead of one per range (the gradient norm's tensors). */
    void (*sum_squares_batch)(const Backend *be, double *sums, const float *const *xs,
                              const size_t *ns, int count);
    /* x[i] *= s */
    void (*scale)(const Backend *be, float *x, float s, size_t n);

    /* One AdamW step (torch.optim.AdamW semantics: decoupled decay param *= 1 - lr*wd, bias
     * corrections with step t >= 1) over n contiguous parameters. grad_scale multiplies the
     * gradient first (global-norm clipping and loss scaling). */
    void (*adamw_update)(const Backend *be, float *param, const float *grad, float *m, float *v,
                         size_t n, float lr, float beta1, float beta2, float eps,
                         float weight_decay, float grad_scale, int t);

    /* Memory the ops work on: host memory for the CPU backend, device memory for CUDA. The
     * model and the optimizer allocate every buffer they hand to ops through these, so the
     * same model code runs on either. alloc returns zeroed memory, or NULL (with ds_error set)
     * when there is not enough; free(NULL) does nothing. Copies are synchronous. */
    void *(*mem_alloc)(const Backend *be, size_t bytes);
    void (*mem_free)(const Backend *be, void *p);
    void (*mem_to_device)(const Backend *be, void *dst, const void *host_src, size_t bytes);
    void (*mem_to_host)(const Backend *be, void *host_dst, const void *src, size_t bytes);
    void (*mem_zero)(const Backend *be, void *p, size_t bytes);
    void (*mem_copy)(const Backend *be, void *dst, const void *src,
                     size_t bytes); /* both in the backend's memory */
    int host_memory; /* 1 when the backend's pointers are plain host memory (no staging needed) */
    /* The device's free and total memory in bytes (DS_OK), or an error naming why it cannot be
     * read; NULL in a backend of host memory (the CPU). */
    int (*mem_info)(const Backend *be, size_t *free_bytes, size_t *total_bytes);

    /* ---- vocab-parallel ops (tensor parallelism): this rank holds rows [vocab_start,
     * vocab_start + V) of the embedding / LM head; NULL in a backend that has no tensor
     * parallelism yet (the model then refuses parallel.tp > 1). ---- */
    /* Rows of tokens outside the range are zero (forward) and get no gradient (backward,
     * dtable += as embedding_backward). */
    void (*embedding_forward_shard)(const Backend *be, float *out, const int32_t *tokens,
                                    const float *table, int N, int C, int vocab_start, int V);
    void (*embedding_backward_shard)(const Backend *be, float *dtable, const float *dout,
                                     const int32_t *tokens, int N, int C, int vocab_start, int V);
    /* Cross-entropy over logits split by vocabulary, in three parts around two all-reduces:
     * 1. row_max[N] = max of each local row (then all-reduce MAX);
     * 2. stats[N, 3] = {sum exp(logit - row_max), the target's logit if this rank holds it else
     *    0, 1 if this rank holds the target else 0} (then all-reduce SUM);
     * 3. losses[N] and, when write_grad, logits overwritten by weights[i] * (softmax - onehot),
     *    as cross_entropy does (weight 0: loss 0, gradient 0; a weighted row whose target no
     *    rank holds: loss NaN, gradient 0). With one shard the three equal cross_entropy. */
    void (*cross_entropy_shard_max)(const Backend *be, float *row_max, const Act *logits, int N,
                                    int V);
    void (*cross_entropy_shard_stats)(const Backend *be, float *stats, const Act *logits,
                                      const float *row_max, const int32_t *targets, int N, int V,
                                      int vocab_start);
    void (*cross_entropy_shard_finish)(const Backend *be, float *losses, Act *logits,
                                       const float *row_max, const float *stats,
                                       const int32_t *targets, const float *weights, int N, int V,
                                       int vocab_start, int write_grad);

    /* ---- mixed precision: NULL in a backend that computes in fp32 throughout (the CPU) ----
     * The backend keeps a bf16 working copy of a flat fp32 parameter buffer (the fp32 values
     * stay the master weights), and every matmul whose weight lies inside the buffer reads the
     * copy. weights_attach registers params[n] (a buffer overlapping one attached already is
     * refused); weights_refresh brings the copy up to the fp32 values (making it the first time,
     * in bf16 mode) and must run after anything wrote them and before the next matmul
     * (model_forward calls it on entry); weights_detach before the buffer is freed. A matmul
     * whose weight lies outside every attached buffer, or finds no copy, rounds it on the fly.
     * A backend may keep the copy current as its adamw_update and adamw_ewc_update write the
     * buffer and round at a refresh only what else wrote it (CUDA does: the optimizer step
     * writes the copy in the same pass, and the mem_* ops and scale mark the ranges they write);
     * so a write into an attached buffer by anything else (a collective such as ZeRO's
     * all-gather, or an op of another backend) must be followed by weights_touched(params) (params
     * as attached), which makes the next refresh round it all. Of this backend's ops only mem_*,
     * scale and the two AdamW updates may write an attached buffer; the others write activations
     * and gradients. */
    int (*weights_attach)(const Backend *be, const float *params, size_t n);
    void (*weights_refresh)(const Backend *be, const float *params);
    void (*weights_detach)(const Backend *be, const float *params);
    void (*weights_touched)(const Backend *be, const float *params);

    /* ---- EWC ---- */
    /* adamw_update with elastic weight consolidation fused in (trainer/ewc.h): the gradient is
     * grad_scale * grad + lambda * sum_k fisher[k] (param - anchor[k]) (the penalty's part is not
     * clipped), in the same pass. fisher[k] and anchor[k] (n_sets of each, pointer arrays in host
     * memory) are backend memory aligned with param. When penalty is not NULL, (lambda / 2) *
     * sum_k fisher[k] (param - anchor[k])^2 of the parameters before the update is added to it,
     * summed in double. decay_to_anchor 1: the decoupled decay pulls toward the latest anchor,
     * param -= lr * weight_decay * (param - anchor[n_sets - 1]) (param stays put where it equals
     * the anchor), instead of param *= 1 - lr * weight_decay; 0: toward 0, as adamw_update. n_sets
     * 0 is adamw_update, bit for bit, whatever decay_to_anchor. */
    void (*adamw_ewc_update)(const Backend *be, float *param, const float *grad, float *m, float *v,
                             size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float grad_scale, int t,
                             const float *const *fisher, const float *const *anchor, int n_sets,
                             float lambda, int decay_to_anchor, double *penalty);

    /* ---- multi-head latent attention (DeepSeek) ----
     * NULL in a backend that does not run these layers yet; model_init refuses such a model
     * there (Architecture.needs_latent_ops). */
    /* dst[i, j] = src[i, j] (+= when accumulate) for a [M, W] block of row-strided Act
     * matrices: ld_dst, ld_src elements between rows. */
    void (*copy_block)(const Backend *be, Act *dst, int ld_dst, const Act *src, int ld_src, int M,
                       int W, int accumulate);
    /* dst[M, W] (fp32, contiguous) = a [M, W] block of src, ld_src elements between rows. */
    void (*act_to_f32)(const Backend *be, float *dst, const Act *src, int ld_src, int M, int W);
    /* Rotary embedding of H heads of D dimensions inside rows of x: head h of token row r starts
     * at x + r * ld_row + h * ld_head. interleave 0: rotate-half pairs (i, i + D/2) as
     * rope_forward; 1: adjacent pairs (2i, 2i + 1), DeepSeek's own layout. backward applies the
     * inverse rotation. */
    void (*rope_block_forward)(const Backend *be, Act *x, int ld_row, int ld_head,
                               const float *pos_cos, const float *pos_sin, int B, int T, int H,
                               int D, int interleave);
    void (*rope_block_backward)(const Backend *be, Act *dx, int ld_row, int ld_head,
                                const float *pos_cos, const float *pos_sin, int B, int T, int H,
                                int D, int interleave);
    /* Causal attention with one kv head per query head, q/k heads of Dqk, v heads of Dv and
     * the given score scale: q, k [N, H*Dqk], v and out [N, H*Dv], lse [B, H, T]. */
    void (*attention_forward_dv)(const Backend *be, Act *out, float *lse, const Act *q,
                                 const Act *k, const Act *v, int B, int T, int H, int Dqk, int Dv,
                                 float scale);
    void (*attention_backward_dv)(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                                  const Act *out, const float *lse, const Act *q, const Act *k,
                                  const Act *v, int B, int T, int H, int Dqk, int Dv, float scale);

    /* ---- mixture of experts (DeepSeek) ---- */
    /* Routing of N tokens (MoeRouting): scores[N, E] = softmax or sigmoid of logits[N, E]
     * (fp32, kept for backward); index[N, k] the chosen experts, ascending within a row;
     * weight[N, k] their weights. bias[E] (NULL: none) is added to the scores for the choice
     * only (DeepSeek-V3's e_score_correction_bias). */
    void (*moe_route)(const Backend *be, int32_t *index, float *weight, float *scores,
                      const Act *logits, const float *bias, int N, const MoeRouting *r);
    /* dlogits[N, E] (overwritten) from dweight[N, k], the gradient of the chosen weights. */
    void (*moe_route_backward)(const Backend *be, Act *dlogits, const float *dweight,
                               const int32_t *index, const float *scores, int N,
                               const MoeRouting *r);
    /* The sequence-wise balance loss of DeepSeek-V3 over B sequences of T tokens: for sequence b,
     * f_e = E / (k T) * (its tokens that chose e), P_e = mean over its tokens of the normalised
     * score s_e / sum_j s_j, and loss += alpha * w_b * sum_e f_e P_e with w_b the sum of its
     * token_weights (its share of the step's tokens). Its gradient (f constant) is ADDED to
     * dlogits through the normalisation and the softmax or sigmoid. NULL in a backend without
     * it. */
    void (*moe_balance)(const Backend *be, Act *dlogits, double *loss, const int32_t *index,
                        const float *scores, const float *token_weights, int B, int T, float alpha,
                        const MoeRouting *r);
    /* Sorts the N * k (token, choice) pairs by expert, tokens ascending within an expert:
     * rows[i] the token, row_weight[i] its weight, slot[i] = token * k + choice; counts[E]
     * (host memory) the pairs of each expert. */
    void (*moe_permute)(const Backend *be, int32_t *rows, float *row_weight, int32_t *slot,
                        int *counts, const int32_t *index, const float *weight, int N, int E,
                        int k);
    /* dst[i] = scale[i] * src[rows[i]] for n rows of C (scale NULL: 1). */
    void (*gather_rows)(const Backend *be, Act *dst, const Act *src, const int32_t *rows,
                        const float *scale, int n, int C);
    /* dst[rows[i]] += scale[i] * src[i], i ascending (scale NULL: 1). */
    void (*scatter_add_rows)(const Backend *be, Act *dst, const Act *src, const int32_t *rows,
                             const float *scale, int n, int C);
    /* out[out_index[i]] = a[rows[i]] . b[i] for n rows of C. */
    void (*rows_dot)(const Backend *be, float *out, const int32_t *out_index, const Act *a,
                     const int32_t *rows, const Act *b, int n, int C);
    /* The routed experts of one MoE layer on rows grouped by expert: counts[e] (host memory)
     * rows of expert e follow those of expert e - 1. eg = xs gate[e]^T and eu = xs up[e]^T
     * [rows, Im], ea = swiglu(eg, eu), ey = ea down[e]^T [rows, C]. gate[e] and up[e] [Im, C] and
     * down[e] [C, Im] are fp32 weights (read through their bf16 copies where attached, as
     * matmul_forward does); the pointer arrays are host memory. */
    void (*moe_experts_forward)(const Backend *be, Act *ey, Act *eg, Act *eu, Act *ea,
                                const Act *xs, float *const *gate, float *const *up,
                                float *const *down, const int *counts, int E, int C, int Im);
    /* Its backward from dey [rows, C]: dxs [rows, C] overwritten; dgate[e], dup[e], ddown[e]
     * accumulated (+=, as matmul_backward's dweight); dea, deg, deu [rows, Im] scratch. */
    void (*moe_experts_backward)(const Backend *be, Act *dxs, float *const *dgate,
                                 float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                 Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                 const Act *eu, const Act *ea, float *const *gate, float *const *up,
                                 float *const *down, const int *counts, int E, int C, int Im);
};

const Backend *backend_cpu(void);
/* What a backend is made with: the config's keys device, precision, cuda.attention,
 * cuda.experts and cuda.weight_copy (NULL or "": the default). */
typedef struct BackendOptions {
    const char *device;    /* "cpu" or "cuda" */
    const char *precision; /* "auto", "fp32", "bf16", and "tf32" on cuda */
    const char *attention; /* cuda: "flash" (default), "mma" or "simple" (cuda_ops.h) */
    const char *experts;   /* cuda: "streams" (default), "grouped" or "loop" */
    /* cuda in bf16: "full" keeps a bf16 working copy of attached weights, "none" rounds a
     * weight where a matmul reads it; "auto" (default) is full here: the trainer judges it
     * against the GPU's memory and makes the backend again with none where it must */
    const char *weight_copy;
} BackendOptions;
/* The backend o describes, set up as it says, its table checked (backend_check). DS_ERR_INPUT
 * with one line naming the option for a device this build or machine does not have, or a choice
 * the device does not have. Each call makes a backend of its own (a CUDA backend: its own
 * context, kernels/cuda/context.cuh), which keeps its options for its life and shares nothing
 * with another; a model lives on the backend it was laid out for. backend_free when done. */
int backend_create(const BackendOptions *o, const Backend **out);
/* Frees what backend_create made (its context); NULL and the CPU backend (one static table, no
 * state) do nothing. The memory its mem_alloc gave is the device's, not the backend's: it stays
 * valid, and another backend on the device may use and free it (after weights_detach here of
 * what was attached). */
void backend_free(const Backend *be);
/* DS_OK when be's table is whole: every required op set, and each optional group (the
 * vocab-parallel ops, mixed precision, the latent-attention and expert ops) set entirely or not
 * at all; else DS_ERR_INTERNAL naming the first op missing (kernels/backend_check.c). */
int backend_check(const Backend *be);
/* The ops of the table as backend_check walks them (read-only), for tests that must reach every
 * op: how many, the name of op i (its field in Backend; NULL past the end), and 1 when be has
 * op i set. */
size_t backend_op_count(void);
const char *backend_op_name(size_t i);
int backend_op_present(const Backend *be, size_t i);

/* ---- host access to backend memory (backend.c): the one place where device memory is staged
 * through the host, for the callers that read or fill it there (loading weights, checkpoints
 * and EWC state, the Fisher's squares). */
typedef enum { STAGE_READ = 1, STAGE_WRITE = 2, STAGE_UPDATE = 3 } StageHow;
/* One piece of the memory on the host: host[0..len) is mem[first..first+len). */
typedef int (*StageFn)(void *ctx, float *host, size_t first, size_t len);
/* fn over the n floats of mem (be's memory), piece after piece in order, stopping at its first
 * error, which is returned. STAGE_READ: each piece holds mem's values; STAGE_WRITE: fn fills it
 * and it is written to mem; STAGE_UPDATE: both. On a host backend there is one piece, mem
 * itself; on a device, pieces of at most chunk floats (0: the whole range) in staging, a host
 * buffer of that many floats (NULL: allocated here and freed). n may be 0 (fn is not called). */
int backend_stage(const Backend *be, float *mem, size_t n, StageHow how, size_t chunk,
                  float *staging, StageFn fn, void *ctx);
/* n floats of be's memory src readable on the host: src itself on a host backend, else copied
 * into buf (n floats of host memory), which is returned. */
const float *backend_view(const Backend *be, const float *src, size_t n, float *buf);

#endif
