/* generate.c: `dstrain generate`: a quick look at what a model or checkpoint learned. Greedy
 * decoding (temperature 0) or top-p sampling, one sequence, on the CPU (or with --device cuda
 * on a GPU). Each new token runs the whole forward over the sequence so far (no KV cache: this
 * is an inspection tool, not a server). Tokens: byte-level (ids 0..255 are bytes) when the model
 * has no tokenizer.json, otherwise the tokenizer.json through tools/tokenizer_helper.py (the
 * `tokenizers` library). */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/hf_model.h"
#include "../checkpoint/model_path.h"
#include "classify.h"
#include "common.h"
#include "inspect.h"
#include "model.h"
#include "train.h"

extern char **environ;

#define GEN_MAX_TOKENS 65536

typedef struct GenOptions {
    const char *model_dir, *prompt, *prompt_ids, *tokenizer_dir, *device, *precision;
    int max_new_tokens;
    double temperature, top_p;
    unsigned long long seed;
    int print_ids;
} GenOptions;

/* ---- tokenizer helper (a child process: argv, stdin and stdout, no shell) ----------------- */

static int run_helper(const char *mode, const char *tokenizer_json, const char *input,
                      char **output)
{
    char helper[1024];
    snprintf(helper, sizeof(helper), "%s/tools/tokenizer_helper.py", DSTRAIN_SOURCE_DIR);
    const char *override = getenv("DSTRAIN_TOKENIZER_HELPER");
    if (override && *override) snprintf(helper, sizeof(helper), "%s", override);
    int in_pipe[2], out_pipe[2];
    if (pipe(in_pipe) != 0)
        return ds_error(DS_ERR_INTERNAL, "tokenizer: pipe: %s", strerror(errno));
    if (pipe(out_pipe) != 0) {
        close(in_pipe[0]);
        close(in_pipe[1]);
        return ds_error(DS_ERR_INTERNAL, "tokenizer: pipe: %s", strerror(errno));
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
    posix_spawn_file_actions_addclose(&fa, in_pipe[1]);
    posix_spawn_file_actions_addclose(&fa, out_pipe[0]);
    char *argv[] = {"python3", helper, (char *)mode, (char *)tokenizer_json, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "python3", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in_pipe[0]);
    close(out_pipe[1]);
    if (rc != 0) {
        close(in_pipe[1]);
        close(out_pipe[0]);
        return ds_error(DS_ERR_INPUT, "tokenizer: cannot run python3: %s", strerror(rc));
    }
    /* the helper reads all of stdin before it writes: write everything, then read */
    size_t len = strlen(input), off = 0;
    while (off < len) {
        ssize_t n = write(in_pipe[1], input + off, len - off);
        if (n <= 0) break;
        off += (size_t)n;
    }
    close(in_pipe[1]);
    size_t cap = 4096, got = 0;
    char *buf = malloc(cap);
    for (ssize_t n; buf && (n = read(out_pipe[0], buf + got, cap - got - 1)) > 0;) {
        got += (size_t)n;
        if (cap - got < 2) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    close(out_pipe[0]);
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    if (!buf) return ds_error(DS_ERR_INTERNAL, "tokenizer: out of memory");
    buf[got] = 0;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        free(buf);
        return ds_error(DS_ERR_INPUT, "tokenizer: %s %s failed (its message is above)", helper,
                        mode);
    }
    *output = buf;
    return DS_OK;
}

/* Whitespace-separated ids into ids[0..*n), each checked against the vocabulary (inspect.h). */
int generate_parse_ids(const char *text, int vocab, int32_t *ids, int cap, int *n,
                       const char *what)
{
    *n = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == ',')
            p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab) {
            char shown[128]; /* the helper's output, escaped: it cannot add lines or escapes */
            return ds_error(DS_ERR_INPUT, "%s: %s: expected token ids in 0..%d", what,
                            ds_quoted(shown, sizeof(shown), p, 20), vocab - 1);
        }
        if (*n == cap) return ds_error(DS_ERR_INPUT, "%s: more than %d tokens", what, cap);
        ids[(*n)++] = (int32_t)v;
        p = end;
    }
    return DS_OK;
}

/* ---- sampling -------------------------------------------------------------------------------- */

static unsigned long long rng_next(unsigned long long *s) /* splitmix64 */
{
    unsigned long long z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct ProbIndex {
    double p;
    int id;
} ProbIndex;

static int compare_prob_desc(const void *a, const void *b)
{
    const ProbIndex *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

/* Greedy: the largest logit (lowest id on ties). Otherwise softmax(logits / T), keep the
 * smallest set of most likely tokens whose mass reaches top_p, renormalize, draw. */
static int sample_next(const float *logits, int V, double temperature, double top_p,
                       unsigned long long *rng, ProbIndex *scratch)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        scratch[i].p = exp(((double)logits[i] - logits[best]) / temperature);
        scratch[i].id = i;
        sum += scratch[i].p;
    }
    qsort(scratch, (size_t)V, sizeof(ProbIndex), compare_prob_desc);
    double kept = 0;
    int k = 0;
    while (k < V && (k == 0 || kept < top_p * sum))
        kept += scratch[k++].p;
    const double u = (double)(rng_next(rng) >> 11) * 0x1.0p-53 * kept;
    double acc = 0;
    for (int i = 0; i < k; i++) {
        acc += scratch[i].p;
        if (u < acc) return scratch[i].id;
    }
    return scratch[k - 1].id;
}

/* ---- the command ------------------------------------------------------------------------------
 */

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dstrain generate --model DIR (--prompt TEXT | --prompt-ids \"ID ...\")\n"
            "                        [--max-new-tokens N] [--temperature T] [--top-p P]\n"
            "                        [--seed S] [--tokenizer DIR] [--print-ids]\n"
            "                        [--device cpu|cuda] [--precision auto|fp32|bf16|tf32]\n"
            "  DIR: a Hugging Face model directory, a checkpoint (step-N), a checkpoint\n"
            "  directory (its newest complete checkpoint) or a run directory (its checkpoints/,\n"
            "  else its export/).\n"
            "  Temperature 0 (the default) is greedy; above 0, top-p (nucleus) sampling.\n"
            "  Tokenizer: DIR/tokenizer.json (or --tokenizer's, or the checkpoint's base model's)\n"
            "  through tools/tokenizer_helper.py; byte-level when there is none.\n"
            "  --print-ids also prints the prompt's and the generated token ids.\n"
            "  --device: where the model computes (default cpu); --precision: as the train\n"
            "  config's key precision (auto: bf16 mixed precision on cuda, fp32 on the CPU).\n");
}

static int parse_args(int argc, char **argv, GenOptions *o)
{
    *o = (GenOptions){.max_new_tokens = 32,
                      .temperature = 0.0,
                      .top_p = 0.9,
                      .seed = 1234,
                      .device = "cpu",
                      .precision = "auto"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--print-ids") == 0) {
            o->print_ids = 1;
            continue;
        }
        if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "generate: %s expects a value", a);
        const char *v = argv[++i];
        char *end;
        if (strcmp(a, "--model") == 0) {
            o->model_dir = v;
        } else if (strcmp(a, "--prompt") == 0) {
            o->prompt = v;
        } else if (strcmp(a, "--prompt-ids") == 0) {
            o->prompt_ids = v;
        } else if (strcmp(a, "--tokenizer") == 0) {
            o->tokenizer_dir = v;
        } else if (strcmp(a, "--device") == 0) {
            o->device = v;
        } else if (strcmp(a, "--precision") == 0) {
            o->precision = v;
        } else if (strcmp(a, "--max-new-tokens") == 0) {
            long n = strtol(v, &end, 10);
            if (*end || end == v || n < 1 || n > GEN_MAX_TOKENS)
                return ds_error(DS_ERR_INPUT,
                                "generate: --max-new-tokens: expected 1..%d, got \"%s\"",
                                GEN_MAX_TOKENS, v);
            o->max_new_tokens = (int)n;
        } else if (strcmp(a, "--temperature") == 0) {
            o->temperature = strtod(v, &end);
            if (*end || end == v || !(o->temperature >= 0) || o->temperature > 100)
                return ds_error(DS_ERR_INPUT,
                                "generate: --temperature: expected 0..100, got \"%s\"", v);
        } else if (strcmp(a, "--top-p") == 0) {
            o->top_p = strtod(v, &end);
            if (*end || end == v || !(o->top_p > 0) || o->top_p > 1)
                return ds_error(DS_ERR_INPUT, "generate: --top-p: expected (0, 1], got \"%s\"", v);
        } else if (strcmp(a, "--seed") == 0) {
            o->seed = strtoull(v, &end, 10);
            if (*end || end == v)
                return ds_error(DS_ERR_INPUT, "generate: --seed: expected an integer, got \"%s\"",
                                v);
        } else {
            return ds_error(DS_ERR_INPUT, "generate: unknown option \"%s\" (see --help)", a);
        }
    }
    if (!o->model_dir) return ds_error(DS_ERR_INPUT, "generate: --model DIR is required");
    if (!o->prompt == !o->prompt_ids)
        return ds_error(DS_ERR_INPUT, "generate: give one of --prompt TEXT or --prompt-ids IDS");
    return DS_OK;
}

int generate_main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return DS_OK;
        }
    GenOptions o;
    DS_TRY(parse_args(argc, argv, &o));

    int status = DS_OK;
    Model model = {0};
    Ckpt *ckpt = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    ProbIndex *scratch = NULL;
    char *helper_out = NULL, *text = NULL;
    ModelConfig mc;
    char path[2048], tokenizer_json[2048] = "", model_dir[MODEL_PATH_MAX];
    ModelPathKind kind;

    const Backend *be = NULL;
    DS_TRY(eval_device_check(o.device, o.precision)); /* the flags first, the device once the
                                                       * model is found */
    DS_TRY(model_path_resolve("generate", o.model_dir, model_dir, sizeof(model_dir), &kind));
    o.model_dir = model_dir;
    const int is_ckpt = kind == MODEL_PATH_CHECKPOINT;
    if (is_ckpt && (status = ckpt_open(o.model_dir, &ckpt)) != DS_OK) goto done;
    /* a checkpoint holds its model's config.json */
    if ((status = hf_config_load(o.model_dir, &mc)) != DS_OK) goto done;
    if (mc.num_labels > 0) {
        status = ds_error(DS_ERR_INPUT,
                          "generate: %s is a classification model (%d labels): "
                          "nothing to generate",
                          o.model_dir, mc.num_labels);
        goto done;
    }
    if ((status = eval_backend(o.device, o.precision, &be)) != DS_OK) goto done;
    /* tokenizer: --tokenizer, the model dir, a checkpoint's base model; else bytes */
    const char *candidates[3] = {o.tokenizer_dir, o.model_dir,
                                 ckpt ? ckpt_model_string(ckpt, "path") : NULL};
    for (int k = 0; k < 3 && !tokenizer_json[0]; k++) {
        if (!candidates[k] || !candidates[k][0]) continue;
        snprintf(path, sizeof(path), "%s/tokenizer.json", candidates[k]);
        if (file_exists(path))
            snprintf(tokenizer_json, sizeof(tokenizer_json), "%s", path);
        else if (k == 0) {
            status = ds_error(DS_ERR_INPUT, "generate: --tokenizer: %s: no tokenizer.json",
                              candidates[k]);
            goto done;
        }
    }
    const int V = mc.vocab_size;
    const int max_total =
        mc.max_position_embeddings > 0 ? mc.max_position_embeddings : GEN_MAX_TOKENS;
    ids = ds_malloc((size_t)GEN_MAX_TOKENS * 2 * sizeof(int32_t));
    if (!ids) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    int n = 0;
    if (o.prompt_ids) {
        status = generate_parse_ids(o.prompt_ids, V, ids, GEN_MAX_TOKENS, &n, "generate: --prompt-ids");
    } else if (tokenizer_json[0]) {
        if ((status = run_helper("encode", tokenizer_json, o.prompt, &helper_out)) == DS_OK)
            status =
                generate_parse_ids(helper_out, V, ids, GEN_MAX_TOKENS, &n,
                                   "generate: tokenizer output");
    } else {
        /* byte-level: BOS (when the model has one), then one id per byte */
        if (mc.bos_token_id >= 0 && mc.bos_token_id < V) ids[n++] = mc.bos_token_id;
        for (const unsigned char *p = (const unsigned char *)o.prompt; *p && status == DS_OK; p++) {
            if (*p >= V || n == GEN_MAX_TOKENS)
                status = ds_error(DS_ERR_INPUT,
                                  "generate: --prompt: byte 0x%02x is outside the "
                                  "model's vocabulary of %d (byte-level, no tokenizer.json)",
                                  *p, V);
            else
                ids[n++] = *p;
        }
    }
    if (status != DS_OK) goto done;
    if (n == 0) {
        status = ds_error(DS_ERR_INPUT, "generate: the prompt has no tokens");
        goto done;
    }
    if (n >= max_total) {
        status = ds_error(DS_ERR_INPUT,
                          "generate: the prompt has %d tokens; the model's context "
                          "is %d (max_position_embeddings)",
                          n, max_total);
        goto done;
    }
    const int prompt_len = n;
    const int T = n + o.max_new_tokens < max_total ? n + o.max_new_tokens : max_total;
    if ((status = eval_check_memory(&mc, 1, T, be)) != DS_OK) goto done;
    if ((status = model_init(&model, &mc, be, 1, T)) != DS_OK) goto done;
    if ((status = model_load_path(&model, o.model_dir, &mc)) != DS_OK) goto done;
    logits = ds_malloc((size_t)T * V * sizeof(float));
    scratch = ds_malloc((size_t)V * sizeof(ProbIndex));
    if (!logits || !scratch) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    /* positions after n are padding: causal attention keeps them from the ones before */
    for (int i = n; i < T; i++)
        ids[i] = 0;
    unsigned long long rng = o.seed;
    while (n < T) {
        model_forward(&model, ids, NULL, NULL, logits);
        const int next =
            sample_next(logits + (size_t)(n - 1) * V, V, o.temperature, o.top_p, &rng, scratch);
        ids[n++] = next;
        if (next == mc.eos_token_id) break;
    }
    if (o.print_ids) {
        printf("prompt ids:");
        for (int i = 0; i < prompt_len; i++)
            printf(" %d", ids[i]);
        printf("\ngenerated ids:");
        for (int i = prompt_len; i < n; i++)
            printf(" %d", ids[i]);
        printf("\n");
    }
    /* decode the generated part */
    if (tokenizer_json[0]) {
        size_t cap = (size_t)(n - prompt_len) * 12 + 2;
        char *list = ds_malloc(cap);
        if (!list) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
        size_t off = 0;
        list[0] = 0;
        for (int i = prompt_len; i < n; i++)
            off += (size_t)snprintf(list + off, cap - off, "%d ", ids[i]);
        status = run_helper("decode", tokenizer_json, list, &text);
        free(list);
        if (status != DS_OK) goto done;
        if (!o.print_ids || !o.prompt_ids) printf("%s%s\n", o.prompt ? o.prompt : "", text);
    } else {
        text = ds_malloc((size_t)(n - prompt_len) + 1);
        if (!text) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
        size_t m = 0;
        for (int i = prompt_len; i < n; i++)
            if (ids[i] < 256) text[m++] = (char)ids[i]; /* special tokens are not text */
        text[m] = 0;
        if (!o.print_ids || !o.prompt_ids) {
            fputs(o.prompt ? o.prompt : "", stdout);
            fwrite(text, 1, m, stdout);
            fputc('\n', stdout);
        }
    }
done:
    model_free(&model);
    backend_free(be);
    if (ckpt) ckpt_close(ckpt);
    free(ids);
    free(logits);
    free(scratch);
    free(helper_out);
    free(text);
    return status;
}
