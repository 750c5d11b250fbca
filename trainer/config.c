/* config.c: the run configuration, defined once by the schema table below. Defaults, YAML and
 * key=value parsing, range checks, the commented default config and docs/config.md are all
 * generated from that table, so a key is added in exactly one place.
 * Not here: what the values mean to the trainer (main.c and the modules read Config).
 * Invariant: a failed load or override leaves the Config unchanged. */
#include "config.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

#include "common.h"

/* ---- the schema -------------------------------------------------------------------------- */

/* CT_FILES: a path or a list of {path, weight} (ConfigDataFiles), with a plain-string mirror of
 * the first path at mirror_offset. */
typedef enum ConfigType { CT_INT, CT_FLOAT, CT_BOOL, CT_STRING, CT_ENUM, CT_FILES } ConfigType;

enum {
    CK_AUTO_IS_ZERO = 1, /* the word "auto" is accepted and stored as 0 */
    CK_NONEMPTY = 2,     /* a string that must not be empty */
    CK_MAX_EXCLUSIVE = 4, /* the upper bound itself is not allowed */
    CK_PATH = 8,          /* a file or directory name: no control characters (it is pasted into
                             scripts, plots and one-line messages) */
    CK_MIN_EXCLUSIVE = 16 /* the lower bound itself is not allowed */
};

typedef struct ConfigKey {
    const char *name;         /* full dotted key; a key without a dot is top level */
    ConfigType type;          /* CT_INT fields are int or long long, chosen by size */
    int flags;                /* CK_* */
    size_t offset, size;      /* where the value lives in Config */
    const char *default_text; /* parsed by the same code as user input */
    long long int_min, int_max;
    double float_min, float_max;
    const char *const *choices; /* CT_ENUM; CT_BOOL: the words it also takes (2, 3, ...);
                                 * NULL-terminated */
    const char *doc;
    size_t mirror_offset; /* CT_FILES */
} ConfigKey;

#define FIELD(f) .offset = offsetof(Config, f), .size = sizeof(((Config *)0)->f)
#define INT_FLAGS(key, f, def, lo, hi, flag_bits, text)                                            \
    {                                                                                              \
        .name = key, .type = CT_INT, .flags = flag_bits, FIELD(f), .default_text = def,            \
        .int_min = lo, .int_max = hi, .doc = text                                                  \
    }
#define INT(key, f, def, lo, hi, text) INT_FLAGS(key, f, def, lo, hi, 0, text)
#define FLT(key, f, def, lo, hi, flag_bits, text)                                                  \
    {                                                                                              \
        .name = key, .type = CT_FLOAT, .flags = flag_bits, FIELD(f), .default_text = def,          \
        .float_min = lo, .float_max = hi, .doc = text                                              \
    }
#define STR(key, f, def, flag_bits, text)                                                          \
    {                                                                                              \
        .name = key, .type = CT_STRING, .flags = flag_bits, FIELD(f), .default_text = def,         \
        .doc = text                                                                                \
    }
#define BOOL(key, f, def, text)                                                                    \
    {                                                                                              \
        .name = key, .type = CT_BOOL, FIELD(f), .default_text = def, .int_max = 1, .doc = text     \
    }
/* A bool that also takes the words given (stored as 2, 3, ... in their order). */
#define BOOL_OR(key, f, def, text, ...)                                                            \
    {                                                                                              \
        .name = key, .type = CT_BOOL, FIELD(f), .default_text = def,                               \
        .choices = (const char *const[]){__VA_ARGS__, NULL}, .doc = text                           \
    }
#define FILES(key, f, mirror, text)                                                                \
    {                                                                                              \
        .name = key, .type = CT_FILES, FIELD(f), .default_text = "",                               \
        .mirror_offset = offsetof(Config, mirror), .doc = text                                     \
    }
#define ENUM(key, f, def, text, ...)                                                               \
    {                                                                                              \
        .name = key, .type = CT_ENUM, FIELD(f), .default_text = def,                               \
        .choices = (const char *const[]){__VA_ARGS__, NULL}, .doc = text                           \
    }

/* Keys of one section stay together: the YAML writer groups them by their first part. The
 * model.preset choices must match the presets in model.c (tests/config checks each one). */
static const ConfigKey config_schema[] = {
    STR("model.path", model_path, "", CK_PATH,
        "Hugging Face model directory to start from; empty = train model.preset from scratch"),
    ENUM("model.preset", model_preset, "tiny", "built-in model shape used when model.path is empty",
         "tiny", "small", "deepseek-coder-1.3b", "deepseek-llm-7b", "tiny-moe", "deepseek-v2-lite"),
    FLT("model.init_std", model_init_std, "0.02", 0, 1, 0,
        "standard deviation of the random initial weights (from-scratch runs)"),
    BOOL("model.random_init", model_random_init, "false",
         "with model.path: take only the shape from its config.json and start from random weights"),
    BOOL("model.allow_extra_tensors", model_allow_extra_tensors, "false",
         "with model.path: load weight files that hold tensors the model config.json describes "
         "lacks (a layer beyond num_hidden_layers), leaving them out with a warning naming them; "
         "false: refused"),

    FILES("data.train", data_train_files, data_train,
          "HDF5 token file to train on, or a mixture: a list of {path, weight}; empty = the "
          "bundled dataset"),
    FILES("data.eval", data_eval_files, data_eval,
          "HDF5 token file(s) scored every eval.every steps, each on its own; empty = none"),
    ENUM("data.mode", data_mode, "lm",
         "lm = documents packed into windows; sft = one example per row, padded, prompt tokens "
         "masked; classification = one example per row with its label",
         "lm", "sft", "classification"),

    INT("train.steps", train_steps, "300", 1, 1000000000, "number of optimizer steps"),
    INT("train.seq_len", train_seq_len, "64", 2, 1048576, "tokens per training sequence"),
    INT("train.micro_batch_size", train_micro_batch_size, "8", 1, 65536,
        "sequences per forward/backward pass on each data-parallel rank"),
    INT("train.grad_accum", train_grad_accum, "1", 1, 65536,
        "micro-batches accumulated into one optimizer step"),
    INT("train.seed", train_seed, "1234", 0, LLONG_MAX,
        "seed for weight initialization and data order"),
    STR("train.resume", train_resume, "none", CK_NONEMPTY | CK_PATH,
        "none = start fresh; auto = latest checkpoint in checkpoint.dir if any; or a checkpoint "
        "path"),
    BOOL_OR("train.activation_checkpointing", train_activation_checkpointing, "false",
            "true: keep only each layer's input in forward and recompute the layer in backward "
            "(activations of L layer inputs plus one layer instead of L whole layers, for one "
            "more forward pass); selective: keep all but the cheap activations (the norms' "
            "outputs, the MLP's activation, MoE layers' gathered expert inputs), which backward "
            "recomputes without any matmul; results are identical (docs/memory.md)",
            "selective"),
    INT("train.max_nonfinite", train_max_nonfinite, "10", 1, 1000000000,
        "a step whose loss or gradient is not finite is skipped (no update); after this many in "
        "a row the run stops"),
    BOOL("train.check_memory", train_check_memory, "true",
         "refuse a run whose memory estimate exceeds the host's memory (cpu) or the GPU's free "
         "memory (cuda) before allocating (docs/memory.md); false: start anyway, with a warning"),

    FLT("optim.lr", optim_lr, "3e-3", 0, 10, 0, "peak learning rate (AdamW)"),
    FLT("optim.min_lr_ratio", optim_min_lr_ratio, "0.1", 0, 1, 0,
        "final learning rate as a fraction of optim.lr (cosine and linear schedules)"),
    FLT("optim.weight_decay", optim_weight_decay, "0.1", 0, 10, 0,
        "decoupled weight decay (not applied to norms and biases)"),
    FLT("optim.beta1", optim_beta1, "0.9", 0, 1, CK_MAX_EXCLUSIVE, "AdamW first-moment decay"),
    FLT("optim.beta2", optim_beta2, "0.95", 0, 1, CK_MAX_EXCLUSIVE, "AdamW second-moment decay"),
    FLT("optim.eps", optim_eps, "1e-8", 0, 1, CK_MIN_EXCLUSIVE,
        "AdamW denominator epsilon; not 0 (the update would be 0/0 = NaN where gradients are 0)"),
    INT("optim.warmup_steps", optim_warmup_steps, "20", 0, 1000000000,
        "steps of linear warmup from 0 to optim.lr"),
    ENUM("optim.schedule", optim_schedule, "cosine", "learning-rate decay after warmup", "cosine",
         "linear", "constant"),
    FLT("optim.clip_grad_norm", optim_clip_grad_norm, "1.0", 0, 1e6, 0,
        "clip the global gradient norm to this value; 0 = off"),

    FLT("moe.balance_loss", moe_balance_loss, "0", 0, 1, 0,
        "mixture of experts: weight alpha of DeepSeek-V3's sequence-wise balance loss, alpha * "
        "sum over experts of f_e P_e per sequence (f_e: the share of the sequence's choices "
        "that went to e, times the number of experts; P_e: its mean normalised score), added "
        "to the objective and reported as balance_loss; 0 = none (DeepSeek-V3 used 1e-4)"),
    FLT("moe.bias_update_rate", moe_bias_update_rate, "0", 0, 1, 0,
        "mixture of experts with a score correction (DeepSeek-V3 e_score_correction_bias): after "
        "each step every expert's bias moves by this much toward balance (up when the expert "
        "got fewer tokens than the mean, down when more: DeepSeek-V3's auxiliary-loss-free "
        "balancing); 0 = the bias stays as loaded"),

    INT_FLAGS("parallel.tp", parallel_tp, "auto", 1, 4096, CK_AUTO_IS_ZERO,
              "tensor-parallel size (ranks per model replica); auto = world size / parallel.dp, "
              "1 when parallel.dp is auto too (dstrain submit sizes an auto layout from the "
              "memory estimate)"),
    INT_FLAGS("parallel.dp", parallel_dp, "auto", 1, 1048576, CK_AUTO_IS_ZERO,
              "data-parallel size; auto = world size / parallel.tp"),
    INT("parallel.ep", parallel_ep, "1", 1, 4096,
        "expert-parallel size (mixture-of-experts models): the routed experts are split over ep "
        "consecutive data-parallel ranks, tokens travel to them by all-to-all; must divide "
        "parallel.dp and the model's n_routed_experts; 1 = every rank holds every expert"),
    INT("parallel.zero", parallel_zero, "1", 0, 1,
        "1 = shard optimizer state over data-parallel ranks (ZeRO-1; with parallel.ep > 1 over "
        "the dp / ep ranks that hold the same experts); 0 = replicate it"),

    STR("checkpoint.dir", checkpoint_dir, "", CK_PATH,
        "directory for training checkpoints; empty = <run.dir>/checkpoints"),
    INT("checkpoint.every", checkpoint_every, "0", 0, 1000000000,
        "save a checkpoint every N steps; 0 = only at the end"),
    INT("checkpoint.keep", checkpoint_keep, "3", 1, 1000000,
        "number of most recent checkpoints kept on disk"),
    INT("checkpoint.keep_every", checkpoint_keep_every, "0", 0, 1000000000,
        "also keep every checkpoint whose step is a multiple of N; 0 = none"),
    BOOL("checkpoint.async", checkpoint_async, "true",
         "write checkpoints in the background while training goes on"),
    ENUM("checkpoint.on_error", checkpoint_on_error, "stop",
         "when a save fails (disk full, ...): stop the run, or warn and continue", "stop",
         "continue"),

    BOOL("export.enabled", export_enabled, "true",
         "export a Hugging Face model directory to <run.dir>/export at the end of the run"),
    ENUM("export.dtype", export_dtype, "bf16", "dtype of the exported weights", "bf16", "fp16",
         "fp32"),
    STR("export.max_shard_size", export_max_shard_size, "5GB", CK_NONEMPTY,
        "largest safetensors shard of an export (e.g. 5GB, 500MB, 2GiB)"),

    INT("eval.every", eval_every, "0", 0, 1000000000,
        "evaluate every N steps; 0 = never during training"),
    INT("eval.batches", eval_batches, "8", 1, 1000000000, "batches per evaluation"),

    ENUM("task.type", task_type, "causal_lm",
         "causal_lm = next-token loss; classification = a head on the last non-padding token "
         "(labels from the data file)",
         "causal_lm", "classification"),
    INT("task.num_labels", task_num_labels, "0", 0, 1000000,
        "number of classes of task.type classification"),
    STR("task.labels", task_labels, "", 0,
        "names of the classes, comma-separated from label 0 (the export's id2label); empty = "
        "LABEL_0, LABEL_1, ... (or the base model's own id2label)"),

    STR("continual.tasks", continual_tasks, "", CK_PATH,
        "YAML file listing the tasks trained one after the other (docs/continual.md); empty = "
        "one ordinary run"),
    STR("continual.state", continual_state, "", CK_PATH,
        "directory with the EWC and replay state of an earlier continual run to start from"),
    BOOL("continual.ewc.enabled", continual_ewc_enabled, "false",
         "elastic weight consolidation after each task"),
    FLT("continual.ewc.lambda", continual_ewc_lambda, "100", 0, 1e12, 0,
        "EWC strength: penalty (lambda / 2) sum F (theta - theta*)^2"),
    ENUM("continual.ewc.mode", continual_ewc_mode, "online",
         "online = one running Fisher; separate = one (Fisher, anchor) per task", "online",
         "separate"),
    FLT("continual.ewc.gamma", continual_ewc_gamma, "1.0", 0, 1, 0,
        "online EWC: F <- gamma F + F_new after each task"),
    ENUM("continual.ewc.decay", continual_ewc_decay, "anchor",
         "where weight decay pulls a decayed tensor once EWC holds an anchor: anchor = toward the "
         "latest anchor; zero = toward 0 (plain AdamW)",
         "anchor", "zero"),
    ENUM("continual.ewc.fisher.type", continual_ewc_fisher_type, "empirical",
         "empirical = true labels; sampled = labels drawn from the model; exact = expectation "
         "over classes (classification); identity = F = 1 (L2 to the anchor, no Fisher pass)",
         "empirical", "sampled", "exact", "identity"),
    INT("continual.ewc.fisher.samples", continual_ewc_fisher_samples, "200", 1, 100000000,
        "examples of the finished task the Fisher is estimated on"),
    BOOL("continual.ewc.fisher.batched", continual_ewc_fisher_batched, "false",
         "estimate from mini-batch gradients (faster, a different estimate) instead of one "
         "gradient per example"),
    INT("continual.replay.capacity", continual_replay_capacity, "0", 0, 1000000000,
        "examples kept in the replay buffer (over all data-parallel ranks); 0 = no replay"),
    FLT("continual.replay.ratio", continual_replay_ratio, "0.25", 0, 1, CK_MAX_EXCLUSIVE,
        "fraction of every batch drawn from the replay buffer"),
    ENUM("continual.replay.policy", continual_replay_policy, "reservoir",
         "reservoir = uniform over everything trained on; task_balanced = equal share per task",
         "reservoir", "task_balanced"),

    STR("run.dir", run_dir, "", CK_PATH,
        "output directory of this run; empty = runs/<YYYYmmdd-HHMMSS>"),
    BOOL("run.save_final", run_save_final, "false",
         "write <run.dir>/final.safetensors: every parameter in full fp32 after the last step, "
         "gathered from all ranks (for checks; use the export for models)"),
    BOOL("run.overwrite", run_overwrite, "false",
         "start a fresh run (train.resume: none) in a run.dir an earlier run filled, replacing "
         "its checkpoints, export and metrics; without it such a run.dir is refused"),
    INT("log.every", log_every, "10", 1, 1000000000, "print and record metrics every N steps"),
    BOOL("log.print_config", log_config_full, "false",
         "print the whole resolved config at start (it is always saved as <run.dir>/config.yaml)"),
    ENUM("device", device, "cpu", "where the model runs", "cpu", "cuda"),
    ENUM("precision", precision, "auto",
         "bf16 = mixed precision (fp32 master weights, weight gradients, residual stream, loss "
         "and optimizer; a bf16 working copy of the weights; the other activations and their "
         "gradients stored in bf16; bf16 matmul operands with fp32 accumulation); fp32 = fp32 "
         "throughout; tf32 = fp32 storage with TF32 matmul products (cuda only); auto = bf16 "
         "on cuda, fp32 on cpu (the CPU computes in fp32 only)",
         "auto", "bf16", "fp32", "tf32"),
    ENUM("cuda.attention", cuda_attention, "flash",
         "how attention computes with device cuda: flash = the bf16 tensor-core kernels where "
         "the head sizes suit them (wgmma on Hopper, mma.sync elsewhere; fp32 kernels for other "
         "sizes and in precision fp32); mma = the mma.sync kernels also on Hopper; simple = the "
         "fp32 CUDA-core kernels for every shape",
         "flash", "mma", "simple"),
    ENUM("cuda.experts", cuda_experts, "streams",
         "how the routed experts' matmuls run with device cuda: streams = each expert's on one "
         "of a few streams (the same bits as loop); grouped = one cuBLAS grouped GEMM a "
         "projection; loop = one matmul after another",
         "streams", "grouped", "loop"),
    ENUM("cuda.weight_copy", cuda_weight_copy, "auto",
         "the bf16 working copy of the weights with device cuda in bf16: full = kept beside the "
         "fp32 weights (2 bytes a parameter; the optimizer writes it as it steps); none = no "
         "copy, each matmul rounds its weight as it reads it (a rounding pass a use: slower, "
         "and the memory of the copy free; a MoE layer's experts then run one after another); "
         "auto = full when the run fits every rank's GPU with it, else none",
         "auto", "full", "none"),
    STR("metrics.listen", metrics_listen, "", 0,
        "HOST:PORT of the Prometheus endpoint (/metrics, /healthz) on rank 0, e.g. "
        "127.0.0.1:9400; empty = off"),
    BOOL("metrics.allow_remote", metrics_allow_remote, "false",
         "allow metrics.listen on an address other than loopback"),
};

#define KEY_COUNT DS_ARRAY_LEN(config_schema)
/* A value as text: the longest is a data file list written as a flow list. */
#define VALUE_TEXT_MAX (CONFIG_DATA_FILES_MAX * (2 * CONFIG_STR_MAX + 96))

/* ---- small helpers ----------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is not valid UTF-8. Rejects
 * overlong forms and surrogates, so every accepted string can be written back as YAML. */
static int utf8_decode(const unsigned char *s, unsigned *code_point)
{
    if (s[0] < 0x80) {
        *code_point = s[0];
        return 1;
    }
    int n = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (n == 0 || s[0] >= 0xF5) return 0;
    unsigned cp = s[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    static const unsigned min_for_length[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    *code_point = cp;
    return n;
}

/* Characters YAML allows unescaped in a stream (YAML 1.1 "printable", as libyaml checks). */
static int yaml_printable(unsigned cp)
{
    return cp == 0x0A || cp == 0x09 || (cp >= 0x20 && cp <= 0x7E) || cp == 0x85 ||
           (cp >= 0xA0 && cp <= 0xD7FF) || (cp >= 0xE000 && cp <= 0xFFFD && cp != 0xFEFF) ||
           (cp >= 0x10000 && cp <= 0x10FFFF);
}

/* Append s as a YAML double-quoted scalar body (no quotes) to out; bytes that are not valid
 * UTF-8 are written as \xNN (only messages ever see those). Stops at max_bytes of input,
 * adding "..." when it does. */
static void escape_into(char *out, size_t cap, const char *s, size_t max_bytes)
{
    size_t o = strlen(out);
    const unsigned char *p = (const unsigned char *)s;
    size_t used = 0;
    while (*p && o + 12 < cap) {
        if (used >= max_bytes) {
            o += (size_t)snprintf(out + o, cap - o, "...");
            break;
        }
        unsigned cp;
        int n = utf8_decode(p, &cp);
        if (n == 0) {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02X", *p);
            p++, used++;
            continue;
        }
        if (cp == '"' || cp == '\\') {
            out[o++] = '\\';
            out[o++] = (char)cp;
        } else if (cp == '\n') {
            o += (size_t)snprintf(out + o, cap - o, "\\n");
        } else if (cp == '\t') {
            o += (size_t)snprintf(out + o, cap - o, "\\t");
        } else if (!yaml_printable(cp) || cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
            /* YAML escapes name code points, so this reads back as the same UTF-8 bytes;
             * U+0085, U+2028 and U+2029 are line breaks that a quoted scalar would fold. */
            if (cp < 0x100)
                o += (size_t)snprintf(out + o, cap - o, "\\x%02X", cp);
            else if (cp < 0x10000)
                o += (size_t)snprintf(out + o, cap - o, "\\u%04X", cp);
            else
                o += (size_t)snprintf(out + o, cap - o, "\\U%08X", cp);
        } else {
            memcpy(out + o, p, (size_t)n);
            o += (size_t)n;
        }
        p += n;
        used += (size_t)n;
    }
    out[o] = 0;
}

/* User text shown inside a message: quoted, escaped, and cut to a readable length. */
static const char *quoted(char *buf, size_t cap, const char *s)
{
    snprintf(buf, cap, "\"");
    escape_into(buf, cap - 2, s, 80);
    strcat(buf, "\"");
    return buf;
}

/* A user-written key shown in a message: plain when it is ordinary, escaped otherwise. */
static const char *key_for_message(char *buf, size_t cap, const char *key)
{
    int plain = strlen(key) <= 100 && key[0] != 0;
    for (const char *p = key; *p && plain; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7F || *p == '"' || *p == '\\') plain = 0;
    if (plain) {
        snprintf(buf, cap, "%s", key);
        return buf;
    }
    return quoted(buf, cap, key);
}

static int levenshtein(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 200 || lb > 200) return INT_MAX;
    int row[201];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diagonal = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int above = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = diagonal + cost;
            if (above + 1 < best) best = above + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diagonal = above;
        }
    }
    return row[lb];
}

static const char *last_part(const char *key)
{
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

/* " (did you mean optim.lr?)" or "" : the closest keys by edit distance over the full dotted
 * key, or else keys whose last part matches (the right name under the wrong section). */
static void suggest(char *out, size_t cap, const char *key)
{
    out[0] = 0;
    int best = INT_MAX;
    int score[KEY_COUNT];
    size_t len = strlen(key);
    const char *last = last_part(key);
    size_t last_len = strlen(last);
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const char *cand = config_schema[i].name;
        int s = INT_MAX;
        int d = levenshtein(key, cand);
        int limit = (int)(len / 4 > 2 ? len / 4 : 2);
        if (d <= limit) {
            s = d;
        } else if (last_len > 0) {
            int dl = levenshtein(last, last_part(cand));
            int last_limit = (int)(last_len / 4 > 1 ? last_len / 4 : 1);
            if (dl == 0 || (last_len >= 4 && dl <= last_limit)) s = 1000 + dl;
        }
        score[i] = s;
        if (s < best) best = s;
    }
    if (best == INT_MAX) return;
    const char *names[KEY_COUNT];
    int n = 0;
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (score[i] == best) names[n++] = config_schema[i].name;
    if (n > 3) return; /* too ambiguous to help */
    snprintf(out, cap, " (did you mean ");
    for (int i = 0; i < n; i++) {
        size_t o = strlen(out);
        snprintf(out + o, cap - o, "%s%s", i == 0 ? "" : i == n - 1 ? " or " : ", ", names[i]);
    }
    size_t o = strlen(out);
    snprintf(out + o, cap - o, "?)");
}

static const ConfigKey *key_find(const char *name)
{
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strcmp(config_schema[i].name, name) == 0) return &config_schema[i];
    return NULL;
}

/* A section is a proper dotted prefix of some key ("optim" for "optim.lr"). */
static const ConfigKey *section_find(const char *prefix)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strncmp(config_schema[i].name, prefix, n) == 0 && config_schema[i].name[n] == '.')
            return &config_schema[i];
    return NULL;
}

static int section_len(const char *key)
{
    const char *dot = strchr(key, '.');
    return dot ? (int)(dot - key) : 0;
}

/* ---- values: parse, check, format -------------------------------------------------------- */

static void format_bound(char *out, size_t cap, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, cap, "%.0f", v);
    else
        snprintf(out, cap, "%g", v);
}

/* The allowed values in words: "1..1000000000", "0..1, 1 excluded", "cosine, linear". */
static const char *expected_text(const ConfigKey *k, char *buf, size_t cap);

static void range_text(const ConfigKey *k, char *out, size_t cap)
{
    char lo[32], hi[32];
    out[0] = 0;
    switch (k->type) {
    case CT_INT:
        snprintf(out, cap, "%lld..%lld", k->int_min, k->int_max);
        break;
    case CT_FLOAT:
        format_bound(lo, sizeof(lo), k->float_min);
        format_bound(hi, sizeof(hi), k->float_max);
        if ((k->flags & CK_MIN_EXCLUSIVE) && (k->flags & CK_MAX_EXCLUSIVE))
            snprintf(out, cap, "%s..%s, %s and %s excluded", lo, hi, lo, hi);
        else if (k->flags & CK_MIN_EXCLUSIVE)
            snprintf(out, cap, "%s..%s, %s excluded", lo, hi, lo);
        else if (k->flags & CK_MAX_EXCLUSIVE)
            snprintf(out, cap, "%s..%s, %s excluded", lo, hi, hi);
        else
            snprintf(out, cap, "%s..%s", lo, hi);
        break;
    case CT_BOOL:
        snprintf(out, cap, "true, false");
        for (const char *const *c = k->choices; c && *c; c++) {
            size_t o = strlen(out);
            snprintf(out + o, cap - o, ", %s", *c);
        }
        break;
    case CT_ENUM:
        for (const char *const *c = k->choices; *c; c++) {
            size_t o = strlen(out);
            snprintf(out + o, cap - o, "%s%s", c == k->choices ? "" : ", ", *c);
        }
        break;
    case CT_STRING:
        if (k->flags & CK_NONEMPTY) snprintf(out, cap, "not empty");
        break;
    case CT_FILES:
        snprintf(out, cap, "up to %d files", CONFIG_DATA_FILES_MAX);
        break;
    }
}

static const char *type_name(const ConfigKey *k)
{
    switch (k->type) {
    case CT_INT:
        return (k->flags & CK_AUTO_IS_ZERO) ? "int or auto" : "int";
    case CT_FLOAT:
        return "float";
    case CT_BOOL:
        return k->choices ? "bool or enum" : "bool";
    case CT_ENUM:
        return "enum";
    case CT_STRING:
        return "string";
    case CT_FILES:
        return "path or list";
    }
    return "?";
}

/* Whole-string number syntax: sign, digits, one dot, exponent. strtod alone would also take
 * "inf", "nan", hex floats and leading spaces, none of which belong in a config. */
static int number_syntax_ok(const char *s)
{
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    int digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9')
            p++, digits++;
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == 0;
}

static int parse_double(const char *s, double *out)
{
    if (!number_syntax_ok(s)) return 0;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (*end != 0) return 0;
    *out = v;
    return 1;
}

static int parse_bool(const char *s, int *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < DS_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = 1, 1;
        if (strcasecmp(s, no[i]) == 0) return *out = 0, 1;
    }
    return 0;
}

/* Shortest decimal that reads back as the same float, in a form YAML 1.1 readers also take
 * as a number ("1.0e-08", not "1e-08"). */
static void format_float(char *out, size_t cap, float f)
{
    if (!isfinite(f)) { /* only a Config filled in by code; config_validate rejects it */
        snprintf(out, cap, "%g", (double)f);
        return;
    }
    for (int precision = 1; precision <= 9; precision++) {
        snprintf(out, cap, "%.*g", precision, (double)f);
        if ((float)strtod(out, NULL) == f) break;
    }
    char *e = strchr(out, 'e');
    if (!e && !strchr(out, '.')) {
        strncat(out, ".0", cap - strlen(out) - 1); /* 1.0, so that it reads as a float */
    } else if (e && !strchr(out, '.')) {
        char tail[32];
        snprintf(tail, sizeof(tail), "%s", e);
        snprintf(e, cap - (size_t)(e - out), ".0%s", tail);
    }
}

static int out_of_range_problem(const ConfigKey *k, const char *text, char *problem, size_t cap)
{
    char range[64];
    range_text(k, range, sizeof(range));
    problem[0] = 0;
    escape_into(problem, cap - 80, text, 40);
    size_t o = strlen(problem);
    snprintf(problem + o, cap - o, " is out of range (%s)", range);
    return 0;
}

/* Integer and bool fields are int, or long long where the schema entry's size says so. */
static void store_int(const ConfigKey *k, Config *c, long long v)
{
    char *field = (char *)c + k->offset;
    if (k->size == sizeof(long long)) {
        memcpy(field, &v, sizeof(v));
    } else {
        int narrow = (int)v;
        memcpy(field, &narrow, sizeof(narrow));
    }
}

static long long load_int(const ConfigKey *k, const Config *c)
{
    const char *field = (const char *)c + k->offset;
    if (k->size == sizeof(long long)) {
        long long v;
        memcpy(&v, field, sizeof(v));
        return v;
    }
    int narrow;
    memcpy(&narrow, field, sizeof(narrow));
    return narrow;
}

/* ---- list-valued data keys (CT_FILES) ---------------------------------------------------- */

static const char *node_kind(yaml_event_type_t type);

static ConfigDataFiles *files_field(const ConfigKey *k, Config *c)
{
    return (ConfigDataFiles *)((char *)c + k->offset);
}

/* Keep the plain-string mirror (the first path) in step with the list. */
static void files_sync_mirror(const ConfigKey *k, Config *c)
{
    const ConfigDataFiles *f = files_field(k, c);
    snprintf((char *)c + k->mirror_offset, CONFIG_STR_MAX, "%s", f->count ? f->items[0].path : "");
}

static int files_check_path(const char *text, size_t len, char *problem, size_t cap)
{
    char q[160];
    if (len >= CONFIG_STR_MAX || strlen(text) != len) {
        snprintf(problem, cap, "path: is %zu bytes long or holds a NUL, the limit is %d", len,
                 CONFIG_STR_MAX - 1);
        return 0;
    }
    if (len == 0) {
        snprintf(problem, cap, "path: must not be empty");
        return 0;
    }
    for (const unsigned char *p = (const unsigned char *)text; *p;) {
        unsigned cp;
        int n = utf8_decode(p, &cp);
        if (n == 0) {
            snprintf(problem, cap, "path: is not valid UTF-8: %s", quoted(q, sizeof(q), text));
            return 0;
        }
        p += n;
    }
    if (ds_has_control_chars(text)) {
        snprintf(problem, cap, "path: holds a control character: %s", quoted(q, sizeof(q), text));
        return 0;
    }
    return 1;
}

static int files_parse_weight(const char *text, float *out, char *problem, size_t cap)
{
    char q[160];
    double v;
    if (!parse_double(text, &v) || !(v > 0) || v > 1e6 || !((float)v > 0)) {
        snprintf(problem, cap, "weight: expected a number in (0, 1e6], got %s",
                 quoted(q, sizeof(q), text));
        return 0;
    }
    *out = (float)v;
    return 1;
}

/* Read the items of a YAML sequence whose start event was consumed: each a path, or a mapping
 * {path, weight}. On a problem writes "[i].field: what" and the offending node's line. */
static int files_read_items(yaml_parser_t *parser, ConfigDataFiles *files, char *problem,
                            size_t cap, size_t *line)
{
    char part[600];
    memset(files, 0, sizeof(*files));
    for (int i = 0;; i++) {
        yaml_event_t item;
        if (!yaml_parser_parse(parser, &item)) {
            *line = parser->problem_mark.line + 1;
            snprintf(problem, cap, ": invalid YAML: %s",
                     parser->problem ? parser->problem : "unreadable input");
            return 0;
        }
        yaml_event_type_t type = item.type;
        *line = item.start_mark.line + 1;
        if (type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&item);
            if (i == 0) snprintf(problem, cap, ": expected at least one file, got an empty list");
            return i > 0;
        }
        if (i == CONFIG_DATA_FILES_MAX) {
            yaml_event_delete(&item);
            snprintf(problem, cap, "[%d]: more than %d files", i, CONFIG_DATA_FILES_MAX);
            return 0;
        }
        ConfigDataFile *file = &files->items[i];
        file->weight = 1.0f;
        if (type == YAML_SCALAR_EVENT) {
            int ok = files_check_path((const char *)item.data.scalar.value,
                                      item.data.scalar.length, part, sizeof(part));
            if (ok) memcpy(file->path, item.data.scalar.value, item.data.scalar.length + 1);
            yaml_event_delete(&item);
            if (!ok) {
                snprintf(problem, cap, "[%d].%s", i, part);
                return 0;
            }
            files->count = i + 1;
            continue;
        }
        yaml_event_delete(&item);
        if (type != YAML_MAPPING_START_EVENT) {
            snprintf(problem, cap, "[%d]: expected a path or {path, weight}, got %s", i,
                     node_kind(type));
            return 0;
        }
        int have_path = 0;
        for (;;) {
            yaml_event_t key, value;
            if (!yaml_parser_parse(parser, &key)) {
                *line = parser->problem_mark.line + 1;
                snprintf(problem, cap, ": invalid YAML: %s",
                         parser->problem ? parser->problem : "unreadable input");
                return 0;
            }
            *line = key.start_mark.line + 1;
            if (key.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&key);
                break;
            }
            char name[64] = "";
            if (key.type == YAML_SCALAR_EVENT)
                snprintf(name, sizeof(name), "%s", (const char *)key.data.scalar.value);
            yaml_event_delete(&key);
            if (strcmp(name, "path") != 0 && strcmp(name, "weight") != 0) {
                char shown[256];
                snprintf(problem, cap, "[%d].%s: unknown key (expected path and weight)", i,
                         key_for_message(shown, sizeof(shown), name));
                return 0;
            }
            if (!yaml_parser_parse(parser, &value)) {
                *line = parser->problem_mark.line + 1;
                snprintf(problem, cap, ": invalid YAML: %s",
                         parser->problem ? parser->problem : "unreadable input");
                return 0;
            }
            *line = value.start_mark.line + 1;
            if (value.type != YAML_SCALAR_EVENT) {
                snprintf(problem, cap, "[%d].%s: expected a %s, got %s", i, name,
                         name[0] == 'p' ? "string" : "number", node_kind(value.type));
                yaml_event_delete(&value);
                return 0;
            }
            const char *text = (const char *)value.data.scalar.value;
            int ok;
            if (name[0] == 'p') {
                ok = files_check_path(text, value.data.scalar.length, part, sizeof(part));
                if (ok) memcpy(file->path, text, value.data.scalar.length + 1);
                have_path = have_path || ok;
            } else {
                ok = files_parse_weight(text, &file->weight, part, sizeof(part));
            }
            yaml_event_delete(&value);
            if (!ok) {
                snprintf(problem, cap, "[%d].%s", i, part);
                return 0;
            }
        }
        if (!have_path) {
            snprintf(problem, cap, "[%d].path: missing (each entry is {path: FILE.h5, weight: W})",
                     i);
            return 0;
        }
        files->count = i + 1;
    }
}

/* An override or re-validated value: "[{path: a.h5, weight: 0.7}, b.h5]" is a flow list,
 * anything else one path of weight 1 ("" = none). Problems start with "[i]" or ": ". */
static int files_set_text(const ConfigKey *k, Config *c, const char *text, char *problem,
                          size_t cap)
{
    ConfigDataFiles *files = files_field(k, c);
    if (text[0] != '[') {
        memset(files, 0, sizeof(*files));
        if (text[0]) {
            char part[600];
            if (!files_check_path(text, strlen(text), part, sizeof(part))) {
                snprintf(problem, cap, ": %s", part + strlen("path: "));
                return 0;
            }
            snprintf(files->items[0].path, CONFIG_STR_MAX, "%s", text);
            files->items[0].weight = 1.0f;
            files->count = 1;
        }
        files_sync_mirror(k, c);
        return 1;
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        snprintf(problem, cap, ": cannot start the YAML parser");
        return 0;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    ConfigDataFiles *parsed = ds_malloc(sizeof(ConfigDataFiles));
    int ok = parsed != NULL;
    size_t line = 0;
    for (int skip = 0; ok && skip < 3; skip++) { /* stream start, document start, sequence start */
        yaml_event_t e;
        if (!yaml_parser_parse(&parser, &e)) {
            snprintf(problem, cap, ": invalid YAML list: %s",
                     parser.problem ? parser.problem : "unreadable input");
            ok = 0;
            break;
        }
        if (skip == 2 && e.type != YAML_SEQUENCE_START_EVENT) {
            snprintf(problem, cap, ": expected a list [...] or a path");
            ok = 0;
        }
        yaml_event_delete(&e);
    }
    if (ok) ok = files_read_items(&parser, parsed, problem, cap, &line);
    if (ok) {
        yaml_event_t e;
        if (!yaml_parser_parse(&parser, &e)) {
            snprintf(problem, cap, ": invalid YAML list: %s",
                     parser.problem ? parser.problem : "unreadable input");
            ok = 0;
        } else {
            if (e.type != YAML_DOCUMENT_END_EVENT) {
                snprintf(problem, cap, ": unexpected text after the list");
                ok = 0;
            }
            yaml_event_delete(&e);
        }
    }
    yaml_parser_delete(&parser);
    if (ok) {
        *files = *parsed;
        files_sync_mirror(k, c);
    }
    free(parsed);
    return ok;
}

/* One path of weight 1 is written as the path; anything else as a flow list. */
static void files_format(const ConfigKey *k, const Config *c, char *out, size_t cap)
{
    const ConfigDataFiles *files = files_field(k, (Config *)c);
    out[0] = 0;
    if (files->count == 0) return;
    if (files->count == 1 && files->items[0].weight == 1.0f && files->items[0].path[0] != '[') {
        snprintf(out, cap, "%s", files->items[0].path);
        return;
    }
    size_t o = 0;
    o += (size_t)snprintf(out + o, cap - o, "[");
    for (int i = 0; i < files->count && o < cap; i++) {
        char weight[64];
        format_float(weight, sizeof(weight), files->items[i].weight);
        o += (size_t)snprintf(out + o, cap - o, "%s{path: \"", i ? ", " : "");
        if (o >= cap) break;
        escape_into(out, cap, files->items[i].path, SIZE_MAX);
        o = strlen(out);
        o += (size_t)snprintf(out + o, cap - o, "\", weight: %s}", weight);
    }
    if (o < cap) snprintf(out + o, cap - o, "]");
}

/* Store text into the key's field. On failure writes the problem ("expected a number, got
 * \"x\"") into problem and returns 0. is_null: YAML null (empty, ~, null), only strings take it. */
static int value_set(const ConfigKey *k, Config *c, const char *text, int is_null, char *problem,
                     size_t cap)
{
    char *field = (char *)c + k->offset;
    char q[160];
    if (is_null) text = "";
    switch (k->type) {
    case CT_FILES:
        return files_set_text(k, c, text, problem, cap);
    case CT_INT: {
        if ((k->flags & CK_AUTO_IS_ZERO) && strcmp(text, "auto") == 0) {
            store_int(k, c, 0);
            return 1;
        }
        const char *expected =
            (k->flags & CK_AUTO_IS_ZERO) ? "expected an integer or auto" : "expected an integer";
        double as_double;
        if (!parse_double(text, &as_double)) {
            snprintf(problem, cap, "%s, got %s", expected, quoted(q, sizeof(q), text));
            return 0;
        }
        long long v;
        int out_of_range = 0;
        if (strpbrk(text, ".eE")) {
            /* "1e6" and "1000.0" are integers written as decimals; "1.5" is not. */
            if (as_double != floor(as_double)) {
                snprintf(problem, cap, "%s, got %s", expected, quoted(q, sizeof(q), text));
                return 0;
            }
            out_of_range = !(as_double >= -9.0e18 && as_double <= 9.0e18);
            v = out_of_range ? 0 : (long long)as_double;
        } else {
            errno = 0;
            v = strtoll(text, NULL, 10);
            out_of_range = errno == ERANGE;
        }
        if (out_of_range || v < k->int_min || v > k->int_max) {
            return out_of_range_problem(k, text, problem, cap);
        }
        store_int(k, c, v);
        return 1;
    }
    case CT_FLOAT: {
        double v;
        if (!parse_double(text, &v)) {
            snprintf(problem, cap, "expected a number, got %s", quoted(q, sizeof(q), text));
            return 0;
        }
        float f = (float)v;
        /* The check is on the stored float: 0.999999999 rounds to 1.0f, which beta must not be,
         * and 1e-50 rounds to 0.0f, which is not what was asked for (an epsilon of 0 divides
         * by zero). A value too small for a normal float is refused, not rounded. */
        double stored = (double)f;
        if (v != 0 && fabsf(f) < FLT_MIN) {
            problem[0] = 0;
            escape_into(problem, cap - 80, text, 40);
            size_t o = strlen(problem);
            snprintf(problem + o, cap - o, " is too small for a 32-bit float (it would be %s)",
                     f == 0 ? "0" : "a denormal");
            return 0;
        }
        int ok = isfinite(f) &&
                 ((k->flags & CK_MIN_EXCLUSIVE) ? stored > k->float_min : stored >= k->float_min) &&
                 ((k->flags & CK_MAX_EXCLUSIVE) ? stored < k->float_max : stored <= k->float_max);
        if (!ok) {
            return out_of_range_problem(k, text, problem, cap);
        }
        memcpy(field, &f, sizeof(f));
        return 1;
    }
    case CT_BOOL: {
        int b;
        if (parse_bool(text, &b)) {
            store_int(k, c, b);
            return 1;
        }
        for (int i = 0; k->choices && k->choices[i]; i++)
            if (strcmp(text, k->choices[i]) == 0) {
                store_int(k, c, 2 + i);
                return 1;
            }
        char buf[200];
        snprintf(problem, cap, "%s, got %s", expected_text(k, buf, sizeof(buf)),
                 quoted(q, sizeof(q), text));
        return 0;
    }
    case CT_ENUM: {
        for (const char *const *choice = k->choices; *choice; choice++) {
            if (strcmp(text, *choice) == 0) {
                snprintf(field, k->size, "%s", text);
                return 1;
            }
        }
        char range[256];
        range_text(k, range, sizeof(range));
        snprintf(problem, cap, "expected one of %s, got %s", range, quoted(q, sizeof(q), text));
        return 0;
    }
    case CT_STRING: {
        size_t n = strlen(text);
        if (n >= k->size) {
            snprintf(problem, cap, "is %zu bytes long, the limit is %zu", n, k->size - 1);
            return 0;
        }
        for (const unsigned char *p = (const unsigned char *)text; *p;) {
            unsigned cp;
            int len = utf8_decode(p, &cp);
            if (len == 0) {
                snprintf(problem, cap, "is not valid UTF-8: %s", quoted(q, sizeof(q), text));
                return 0;
            }
            p += len;
        }
        if ((k->flags & CK_NONEMPTY) && n == 0) {
            snprintf(problem, cap, "must not be empty");
            return 0;
        }
        if ((k->flags & CK_PATH) && ds_has_control_chars(text)) {
            snprintf(problem, cap, "a path with a control character: %s",
                     quoted(q, sizeof(q), text));
            return 0;
        }
        memcpy(field, text, n + 1);
        return 1;
    }
    }
    return 0;
}

/* The value of a key as it is written to YAML (strings unquoted; the writer quotes them). */
static void value_format(const ConfigKey *k, const Config *c, char *out, size_t cap)
{
    const char *field = (const char *)c + k->offset;
    switch (k->type) {
    case CT_INT: {
        long long v = load_int(k, c);
        if ((k->flags & CK_AUTO_IS_ZERO) && v == 0)
            snprintf(out, cap, "auto");
        else
            snprintf(out, cap, "%lld", v);
        break;
    }
    case CT_FLOAT: {
        float f;
        memcpy(&f, field, sizeof(f));
        format_float(out, cap, f);
        break;
    }
    case CT_BOOL: {
        const long long v = load_int(k, c);
        long long words = 0;
        while (k->choices && k->choices[words])
            words++;
        if (v == 0 || v == 1)
            snprintf(out, cap, "%s", v ? "true" : "false");
        else if (v >= 2 && v - 2 < words)
            snprintf(out, cap, "%s", k->choices[v - 2]);
        else /* set by code out of range: shown as it is, which config_validate refuses */
            snprintf(out, cap, "%lld", v);
        break;
    }
    case CT_ENUM:
    case CT_STRING:
        snprintf(out, cap, "%.*s", (int)k->size, field);
        break;
    case CT_FILES:
        files_format(k, c, out, cap);
        break;
    }
}

/* Plain YAML scalars that another reader would take as something other than this string. */
static int needs_quotes(const char *s)
{
    static const char *special[] = {"true", "false", "yes", "no",   "on",   "off",  "y",
                                    "n",    "null",  "~",   ".nan", ".inf", "-.inf"};
    if (!*s) return 1;
    for (size_t i = 0; i < DS_ARRAY_LEN(special); i++)
        if (strcasecmp(s, special[i]) == 0) return 1;
    double ignored;
    if (parse_double(s, &ignored)) return 1;
    /* Indicators, and leading digits or signs: YAML 1.1 readers take "0x1f", "1_000" or
     * "12:30" as numbers. */
    if (strchr("-?:,[]{}#&*!|>'\"%@` =<0123456789+.", s[0])) return 1;
    if (s[strlen(s) - 1] == ' ' || s[strlen(s) - 1] == ':') return 1;
    if (strstr(s, ": ") || strstr(s, " #")) return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p >= 0x7F || *p == '\\') return 1;
    return 0;
}

static void write_scalar(FILE *out, const ConfigKey *k, const char *text)
{
    if (k->type == CT_FILES && text[0] == '[') {
        fputs(text, out); /* a flow list, read back as a sequence */
    } else if ((k->type == CT_STRING || k->type == CT_ENUM || k->type == CT_FILES) &&
               needs_quotes(text)) {
        char buf[CONFIG_STR_MAX * 10 + 16] = "";
        escape_into(buf, sizeof(buf), text, SIZE_MAX);
        fprintf(out, "\"%s\"", buf);
    } else {
        fputs(text, out);
    }
}

/* ---- public: defaults, overrides, validation --------------------------------------------- */

void config_set_defaults(Config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < KEY_COUNT; i++) {
        char problem[256];
        /* The defaults go through the parser too; tests/config proves that each one is valid. */
        value_set(&config_schema[i], c, config_schema[i].default_text, 0, problem, sizeof(problem));
    }
}

static int error_unknown_key(const char *where, const char *key)
{
    char shown[256], hint[512];
    suggest(hint, sizeof(hint), key);
    /* No close match, but the section is right: list what the section has. */
    int len = section_len(key);
    char section[256];
    if (!hint[0] && len > 0 && len < (int)sizeof(section)) {
        snprintf(section, sizeof(section), "%.*s", len, key);
        if (section_find(section) && !strchr(key + len + 1, '.')) {
            snprintf(hint, sizeof(hint), " (keys under %s:", section);
            for (size_t i = 0; i < KEY_COUNT; i++) {
                const char *name = config_schema[i].name;
                if (strncmp(name, section, (size_t)len) != 0 || name[len] != '.') continue;
                size_t o = strlen(hint);
                snprintf(hint + o, sizeof(hint) - o, "%s %s", hint[o - 1] == ':' ? "" : ",",
                         name + len + 1);
            }
            size_t o = strlen(hint);
            snprintf(hint + o, sizeof(hint) - o, ")");
        }
    }
    return ds_error(DS_ERR_INPUT, "%s: %s: unknown key%s", where,
                    key_for_message(shown, sizeof(shown), key), hint);
}

static int error_section_scalar(const char *where, const char *section, const char *got)
{
    const ConfigKey *example = section_find(section);
    return ds_error(DS_ERR_INPUT,
                    "%s: %s: is a section, expected its keys (such as %s) under it, got %s", where,
                    section, example->name, got);
}

int config_apply_override(Config *c, const char *assignment, const char *source)
{
    char q[160];
    const char *eq = strchr(assignment, '=');
    if (!eq) {
        char shown[256];
        return ds_error(DS_ERR_INPUT, "%s: %s: expected key=value, e.g. optim.lr=3e-4", source,
                        key_for_message(shown, sizeof(shown), assignment));
    }
    char key[256];
    size_t n = (size_t)(eq - assignment);
    while (n > 0 && (assignment[n - 1] == ' ' || assignment[n - 1] == '\t'))
        n--;
    const char *start = assignment;
    while (n > 0 && (*start == ' ' || *start == '\t'))
        start++, n--;
    if (n == 0)
        return ds_error(DS_ERR_INPUT, "%s: %s: missing key before '='", source,
                        quoted(q, sizeof(q), assignment));
    if (n >= sizeof(key)) n = sizeof(key) - 1; /* such a key is unknown anyway */
    memcpy(key, start, n);
    key[n] = 0;
    const char *value = eq + 1;

    const ConfigKey *k = key_find(key);
    if (!k) {
        if (section_find(key))
            return error_section_scalar(source, key, quoted(q, sizeof(q), value));
        return error_unknown_key(source, key);
    }
    Config updated = *c;
    char problem[512];
    if (!value_set(k, &updated, value, 0, problem, sizeof(problem)))
        return ds_error(DS_ERR_INPUT, "%s: %s%s%s", source, k->name,
                        k->type == CT_FILES ? "" : ": ", problem);
    /* an override names its files itself: no config file line to point at any more */
    if (strcmp(k->name, "data.train") == 0) updated.data_train_where[0] = 0;
    if (strcmp(k->name, "data.eval") == 0) updated.data_eval_where[0] = 0;
    *c = updated;
    return DS_OK;
}

int config_validate(const Config *c)
{
    /* Every value again against the schema: a Config may also have been filled in by code. */
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const ConfigKey *k = &config_schema[i];
        const char *field = (const char *)c + k->offset;
        if ((k->type == CT_STRING || k->type == CT_ENUM) && !memchr(field, 0, k->size))
            return ds_error(DS_ERR_INPUT, "config: %s: value is not terminated", k->name);
        if (k->type == CT_FILES) {
            const ConfigDataFiles *files = (const ConfigDataFiles *)field;
            if (files->count < 0 || files->count > CONFIG_DATA_FILES_MAX)
                return ds_error(DS_ERR_INPUT, "config: %s: %d files, the limit is %d", k->name,
                                files->count, CONFIG_DATA_FILES_MAX);
            for (int i = 0; i < files->count; i++)
                if (!memchr(files->items[i].path, 0, CONFIG_STR_MAX))
                    return ds_error(DS_ERR_INPUT, "config: %s[%d].path: value is not terminated",
                                    k->name, i);
        }
        char text[VALUE_TEXT_MAX], problem[512];
        value_format(k, c, text, sizeof(text));
        Config scratch = *c;
        if (!value_set(k, &scratch, text, 0, problem, sizeof(problem)))
            return ds_error(DS_ERR_INPUT, "config: %s%s%s", k->name,
                            k->type == CT_FILES ? "" : ": ", problem);
    }
    /* Token counts per micro-batch index int32 buffers in the model and data code. */
    long long tokens = (long long)c->train_seq_len * c->train_micro_batch_size;
    if (tokens > INT_MAX)
        return ds_error(DS_ERR_INPUT,
                        "config: train.seq_len x train.micro_batch_size: %d x %d = %lld tokens per "
                        "micro-batch, the limit is %d",
                        c->train_seq_len, c->train_micro_batch_size, tokens, INT_MAX);
    if (c->parallel_dp > 0 && (long long)c->parallel_dp * c->parallel_tp > 1048576)
        return ds_error(DS_ERR_INPUT,
                        "config: parallel.tp x parallel.dp: %d x %d ranks is more than 1048576",
                        c->parallel_tp, c->parallel_dp);
    if (c->parallel_dp > 0 && c->parallel_dp % c->parallel_ep != 0)
        return ds_error(DS_ERR_INPUT,
                        "config: parallel.ep: %d does not divide parallel.dp %d (the experts are "
                        "split over ep ranks of each data-parallel group)",
                        c->parallel_ep, c->parallel_dp);
    return DS_OK;
}

/* ---- YAML files -------------------------------------------------------------------------- */

typedef struct YamlLoad {
    yaml_parser_t parser;
    FILE *file;
    const char *path;
    Config *config;
    int line_set[KEY_COUNT]; /* line where each key was set in this file, 0 = not set */
} YamlLoad;

static int yaml_next(YamlLoad *y, yaml_event_t *event)
{
    if (yaml_parser_parse(&y->parser, event)) return DS_OK;
    const char *problem = y->parser.problem ? y->parser.problem : "unreadable input";
    size_t line = y->parser.problem_mark.line + 1;
    if (y->parser.error == YAML_READER_ERROR) {
        /* Reader errors (bad encoding, control characters) carry a byte offset, not a line. */
        size_t offset = y->parser.problem_offset, line_of_offset = 1;
        struct stat st;
        if (fstat(fileno(y->file), &st) != 0 || !S_ISREG(st.st_mode))
            return ds_error(DS_ERR_INPUT, "%s: invalid YAML: %s (byte %zu)", y->path, problem,
                            offset);
        rewind(y->file);
        for (size_t i = 0; i < offset; i++) {
            int ch = fgetc(y->file);
            if (ch == EOF) break;
            if (ch == '\n') line_of_offset++;
        }
        return ds_error(DS_ERR_INPUT, "%s:%zu: invalid YAML: %s (byte %zu)", y->path,
                        line_of_offset, problem, offset);
    }
    if (y->parser.context)
        return ds_error(DS_ERR_INPUT, "%s:%zu: invalid YAML: %s (%s at line %zu)", y->path, line,
                        problem, y->parser.context, y->parser.context_mark.line + 1);
    return ds_error(DS_ERR_INPUT, "%s:%zu: invalid YAML: %s", y->path, line, problem);
}

static const char *node_kind(yaml_event_type_t type)
{
    switch (type) {
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SEQUENCE_START_EVENT:
        return "a sequence";
    case YAML_ALIAS_EVENT:
        return "an alias";
    default:
        return "a scalar";
    }
}

static const char *expected_text(const ConfigKey *k, char *buf, size_t cap)
{
    switch (k->type) {
    case CT_INT:
        return (k->flags & CK_AUTO_IS_ZERO) ? "expected an integer or auto" : "expected an integer";
    case CT_FLOAT:
        return "expected a number";
    case CT_BOOL: {
        if (!k->choices) return "expected true or false";
        size_t o = (size_t)snprintf(buf, cap, "expected true, false");
        for (const char *const *w = k->choices; *w && o < cap; w++)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", w[1] ? ", " : " or ", *w);
        return buf;
    }
    case CT_STRING:
        return "expected a string";
    case CT_FILES:
        return "expected a path or a list of {path, weight}";
    case CT_ENUM: {
        char range[200];
        range_text(k, range, sizeof(range));
        snprintf(buf, cap, "expected one of %s", range);
        return buf;
    }
    }
    return "expected a value";
}

static int yaml_scalar_is_null(const yaml_event_t *e)
{
    if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *v = (const char *)e->data.scalar.value;
    return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

static int yaml_walk_mapping(YamlLoad *y, const char *prefix);

/* Handles one "key: value" pair; the key event has been read, the value comes next. */
static int yaml_walk_pair(YamlLoad *y, const char *full, size_t key_line)
{
    char where[4200];
    snprintf(where, sizeof(where), "%s:%zu", y->path, key_line);
    const ConfigKey *k = key_find(full);
    const ConfigKey *section = k ? NULL : section_find(full);
    yaml_event_t value;
    DS_TRY(yaml_next(y, &value));
    yaml_event_type_t type = value.type;
    int status = DS_OK;

    if (type == YAML_SCALAR_EVENT) {
        const char *text = (const char *)value.data.scalar.value;
        size_t value_line = value.start_mark.line + 1;
        if (k) {
            size_t index = (size_t)(k - config_schema);
            if (y->line_set[index]) {
                status = ds_error(DS_ERR_INPUT, "%s: %s: set twice in this file (first on line %d)",
                                  where, k->name, y->line_set[index]);
            } else {
                char problem[512];
                y->line_set[index] = (int)key_line;
                if (strlen(text) != value.data.scalar.length)
                    status = ds_error(DS_ERR_INPUT, "%s:%zu: %s: contains a NUL character", y->path,
                                      value_line, k->name);
                else if (k->type == CT_FILES && !yaml_scalar_is_null(&value) && text[0] == '[')
                    /* a quoted path that looks like a flow list stays a path */
                    status = ds_error(DS_ERR_INPUT, "%s:%zu: %s: a path may not start with '['",
                                      y->path, value_line, k->name);
                else if (!value_set(k, y->config, text, yaml_scalar_is_null(&value), problem,
                                    sizeof(problem)))
                    status = ds_error(DS_ERR_INPUT, "%s:%zu: %s: %s", y->path, value_line, k->name,
                                      problem);
            }
        } else if (section) {
            char q[160];
            status = error_section_scalar(where, full, quoted(q, sizeof(q), text));
        } else {
            status = error_unknown_key(where, full);
        }
        yaml_event_delete(&value);
        return status;
    }
    yaml_event_delete(&value);

    if (type == YAML_SEQUENCE_START_EVENT && k && k->type == CT_FILES) {
        size_t index = (size_t)(k - config_schema), line = key_line;
        if (y->line_set[index])
            return ds_error(DS_ERR_INPUT, "%s: %s: set twice in this file (first on line %d)",
                            where, k->name, y->line_set[index]);
        y->line_set[index] = (int)key_line;
        char problem[1024];
        ConfigDataFiles *files = ds_malloc(sizeof(ConfigDataFiles));
        if (!files) return DS_ERR_INTERNAL;
        int ok = files_read_items(&y->parser, files, problem, sizeof(problem), &line);
        if (ok) {
            *files_field(k, y->config) = *files;
            files_sync_mirror(k, y->config);
        }
        free(files);
        if (!ok) return ds_error(DS_ERR_INPUT, "%s:%zu: %s%s", y->path, line, k->name, problem);
        return DS_OK;
    }
    if (type == YAML_MAPPING_START_EVENT && !k && section) return yaml_walk_mapping(y, full);
    if (type == YAML_ALIAS_EVENT) {
        char shown[256];
        return ds_error(DS_ERR_INPUT, "%s: %s: YAML aliases (*name) are not supported", where,
                        key_for_message(shown, sizeof(shown), full));
    }
    if (k) {
        char buf[256];
        return ds_error(DS_ERR_INPUT, "%s: %s: %s, got %s", where, k->name,
                        expected_text(k, buf, sizeof(buf)), node_kind(type));
    }
    if (section) return error_section_scalar(where, full, node_kind(type));
    if (type == YAML_MAPPING_START_EVENT) {
        /* An unknown section: name its first key in full, so the suggestion can find the
         * intended key ("optm: {lr: 1}" -> optm.lr -> optim.lr). */
        yaml_event_t first;
        DS_TRY(yaml_next(y, &first));
        if (first.type == YAML_SCALAR_EVENT && strlen(full) + first.data.scalar.length < 240) {
            char inner[600];
            snprintf(inner, sizeof(inner), "%s.%s", full, (const char *)first.data.scalar.value);
            snprintf(where, sizeof(where), "%s:%zu", y->path, first.start_mark.line + 1);
            yaml_event_delete(&first);
            return error_unknown_key(where, inner);
        }
        yaml_event_delete(&first);
    }
    return error_unknown_key(where, full);
}

static int yaml_walk_mapping(YamlLoad *y, const char *prefix)
{
    for (;;) {
        yaml_event_t key;
        DS_TRY(yaml_next(y, &key));
        if (key.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&key);
            return DS_OK;
        }
        size_t line = key.start_mark.line + 1;
        if (key.type != YAML_SCALAR_EVENT) {
            const char *kind = node_kind(key.type);
            yaml_event_delete(&key);
            return ds_error(DS_ERR_INPUT, "%s:%zu: a key must be a name, got %s", y->path, line,
                            kind);
        }
        char full[512];
        const char *name = (const char *)key.data.scalar.value;
        if (strlen(prefix) + key.data.scalar.length + 2 > sizeof(full)) {
            char where[4200];
            snprintf(where, sizeof(where), "%s:%zu", y->path, line);
            int status = error_unknown_key(where, name);
            yaml_event_delete(&key);
            return status;
        }
        snprintf(full, sizeof(full), "%s%s%s", prefix, *prefix ? "." : "", name);
        yaml_event_delete(&key);
        DS_TRY(yaml_walk_pair(y, full, line));
    }
}

static int yaml_walk_stream(YamlLoad *y)
{
    yaml_event_t event;
    DS_TRY(yaml_next(y, &event)); /* stream start */
    yaml_event_delete(&event);
    for (int documents = 0;; documents++) {
        DS_TRY(yaml_next(y, &event));
        yaml_event_type_t type = event.type;
        size_t line = event.start_mark.line + 1;
        yaml_event_delete(&event);
        if (type == YAML_STREAM_END_EVENT) return DS_OK;
        if (documents > 0)
            return ds_error(DS_ERR_INPUT,
                            "%s:%zu: a second YAML document; put all keys in one document", y->path,
                            line);
        /* document start, then the root node */
        DS_TRY(yaml_next(y, &event));
        type = event.type;
        line = event.start_mark.line + 1;
        int empty_root = type == YAML_SCALAR_EVENT && yaml_scalar_is_null(&event);
        yaml_event_delete(&event);
        if (type == YAML_MAPPING_START_EVENT) {
            DS_TRY(yaml_walk_mapping(y, ""));
        } else if (!empty_root) {
            return ds_error(DS_ERR_INPUT, "%s:%zu: expected a mapping of keys (key: value), got %s",
                            y->path, line, node_kind(type));
        }
        DS_TRY(yaml_next(y, &event)); /* document end */
        yaml_event_delete(&event);
    }
}

int config_yaml_check_depth(const char *path, int max_depth)
{
    FILE *f = ds_fopen_regular(path, "rb");
    if (!f) return DS_ERR_INPUT;
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot start the YAML parser", path);
    }
    yaml_parser_set_input_file(&parser, f);
    int status = DS_OK, depth = 0;
    for (;;) {
        yaml_event_t e;
        if (!yaml_parser_parse(&parser, &e)) break; /* the loader reports it, with context */
        yaml_event_type_t type = e.type;
        size_t line = e.start_mark.line + 1;
        yaml_event_delete(&e);
        if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) depth++;
        if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) depth--;
        if (depth > max_depth) {
            char shown[600];
            status = ds_error(DS_ERR_INPUT, "%s:%zu: YAML nested deeper than %d levels",
                              ds_printable(shown, sizeof(shown), path, 400), line, max_depth);
            break;
        }
        if (type == YAML_STREAM_END_EVENT) break;
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return status;
}

int config_load_yaml(Config *c, const char *path)
{
    /* No depth check needed here: the walk below reads events and stops at the first level
     * the schema does not have (at most four deep). */
    FILE *f = ds_fopen_regular(path, "rb");
    if (!f) return DS_ERR_INPUT;
    YamlLoad *y = ds_calloc(1, sizeof(YamlLoad));
    Config *updated = ds_malloc(sizeof(Config));
    if (!y || !updated) {
        free(y);
        free(updated);
        fclose(f);
        return DS_ERR_INTERNAL;
    }
    *updated = *c;
    y->path = path;
    y->file = f;
    y->config = updated;
    int status;
    if (!yaml_parser_initialize(&y->parser)) {
        status = ds_error(DS_ERR_INTERNAL, "%s: cannot start the YAML parser", path);
    } else {
        yaml_parser_set_input_file(&y->parser, f);
        status = yaml_walk_stream(y);
        yaml_parser_delete(&y->parser);
    }
    if (status == DS_OK && ferror(f))
        status = ds_error(DS_ERR_INPUT, "%s: read error: %s", path, strerror(errno));
    fclose(f);
    /* where the data files were named, for the messages of the checks on them */
    const struct {
        const char *key;
        char *where;
        int named; /* the file named at least one */
    } origins[] = {{"data.train", updated->data_train_where, updated->data_train_files.count > 0},
                   {"data.eval", updated->data_eval_where, updated->data_eval_files.count > 0}};
    for (size_t i = 0; status == DS_OK && i < DS_ARRAY_LEN(origins); i++) {
        const ConfigKey *k = key_find(origins[i].key);
        const int line = k ? y->line_set[k - config_schema] : 0;
        if (line && origins[i].named)
            snprintf(origins[i].where, CONFIG_STR_MAX + 32, "%s:%d: ", path, line);
        else if (line)
            origins[i].where[0] = 0;
    }
    if (status == DS_OK) *c = *updated;
    free(updated);
    free(y);
    return status;
}

/* ---- writers ----------------------------------------------------------------------------- */

void config_write_yaml(const Config *c, FILE *out, int with_docs)
{
    if (with_docs) {
        fprintf(out,
                "# dstrain configuration: every key with its default value.\n"
                "# Generated from the schema in trainer/config.c (reference: docs/config.md).\n"
                "# Keys may be nested as below or written dotted at the top level\n"
                "# (optim.lr: 3e-4); on the command line, override any key with key=value.\n");
    }
    const char *open_section = NULL;
    int open_len = 0;
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const ConfigKey *k = &config_schema[i];
        int len = section_len(k->name);
        int same =
            open_section && len == open_len && strncmp(k->name, open_section, (size_t)len) == 0;
        if (!same) {
            if (with_docs) fputc('\n', out);
            if (len > 0) fprintf(out, "%.*s:\n", len, k->name);
            open_section = len > 0 ? k->name : NULL;
            open_len = len;
        }
        const char *indent = len > 0 ? "  " : "";
        if (with_docs) {
            char range[256];
            range_text(k, range, sizeof(range));
            fprintf(out, "%s# %s (%s%s%s)\n", indent, k->doc, type_name(k), range[0] ? ": " : "",
                    range);
        }
        char text[VALUE_TEXT_MAX];
        value_format(k, c, text, sizeof(text));
        fprintf(out, "%s%s: ", indent, k->name + (len > 0 ? len + 1 : 0));
        write_scalar(out, k, text);
        fputc('\n', out);
    }
}

static void markdown_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '<')
            fputs("&lt;", out);
        else if (*s == '>')
            fputs("&gt;", out);
        else
            fputc(*s, out);
    }
}

void config_write_markdown(FILE *out)
{
    Config defaults;
    config_set_defaults(&defaults);
    fprintf(out,
            "# Configuration\n"
            "\n"
            "<!-- Generated from the schema in trainer/config.c by config_write_markdown(); the\n"
            "     config tests fail when this page and the schema disagree. -->\n"
            "\n"
            "A run is configured by a YAML file and `key=value` overrides on the command line,\n"
            "applied in that order over the defaults below. In YAML, keys are nested by section\n"
            "(`optim:` then `  lr: 3e-4`) or written dotted at the top level (`optim.lr: 3e-4`).\n"
            "Unknown keys, values of the wrong type and values out of range are errors that name\n"
            "the file, line and key. `configs/defaults.yaml` is the complete default config.\n"
            "\n"
            "Integers also accept exponent notation when the value is whole (`1e6`). Booleans\n"
            "accept true/false, yes/no, on/off and 1/0. An empty string value is written `\"\"`.\n"
            "\n"
            "| key | type | default | range | description |\n"
            "| --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const ConfigKey *k = &config_schema[i];
        char text[VALUE_TEXT_MAX], range[256];
        value_format(k, &defaults, text, sizeof(text));
        range_text(k, range, sizeof(range));
        fprintf(out, "| `%s` | %s | ", k->name, type_name(k));
        if ((k->type == CT_STRING || k->type == CT_FILES) && !text[0])
            fputs("`\"\"`", out);
        else
            fprintf(out, "`%s`", text);
        fputs(" | ", out);
        markdown_cell(out, range);
        fputs(" | ", out);
        markdown_cell(out, k->doc);
        fputs(" |\n", out);
    }
}

void config_write_help(FILE *out)
{
    Config defaults;
    config_set_defaults(&defaults);
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const ConfigKey *k = &config_schema[i];
        char text[VALUE_TEXT_MAX], range[256];
        value_format(k, &defaults, text, sizeof(text));
        range_text(k, range, sizeof(range));
        fprintf(out, "  %-32s %s (%s, default %s%s%s)\n", k->name, k->doc, type_name(k),
                ((k->type == CT_STRING || k->type == CT_FILES) && !text[0]) ? "\"\"" : text, range[0] ? "; " : "", range);
    }
}
