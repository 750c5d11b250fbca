/* config.h: the run configuration. One schema table in config.c defines every key (type,
 * default, range, one-line doc, where it lives in Config); parsing YAML, key=value overrides,
 * validation, `dstrain config --defaults` and docs/config.md all come from that table. */
#ifndef DSTRAIN_CONFIG_H
#define DSTRAIN_CONFIG_H

#include <stdio.h>

#define CONFIG_STR_MAX 1024

/* A list-valued data key (data.train, data.eval): a plain path is one file of weight 1. */
#define CONFIG_DATA_FILES_MAX 16
typedef struct ConfigDataFile {
    char path[CONFIG_STR_MAX];
    float weight; /* > 0; mixture weights are normalized over the list */
} ConfigDataFile;
typedef struct ConfigDataFiles {
    int count; /* 0 = not set */
    ConfigDataFile items[CONFIG_DATA_FILES_MAX];
} ConfigDataFiles;

typedef struct Config {
    /* model */
    char model_path[CONFIG_STR_MAX];   /* model.path: HF directory; empty = use preset */
    char model_preset[64];             /* model.preset: tiny | ... */
    float model_init_std;              /* model.init_std */
    int model_random_init;             /* model.random_init: shape from model.path, random weights */
    int model_allow_extra_tensors;     /* tensors the model lacks: a warning, not an error */
    /* data */
    char data_train[CONFIG_STR_MAX];   /* data.train: the first file (as a plain path); empty = bundled */
    ConfigDataFiles data_train_files;  /* data.train: every file with its weight */
    char data_eval[CONFIG_STR_MAX];    /* data.eval: the first file */
    ConfigDataFiles data_eval_files;   /* data.eval: every file (each scored on its own) */
    char data_mode[16];                /* lm | sft | classification */
    char data_train_where[CONFIG_STR_MAX + 32]; /* "FILE:LINE: " of data.train in a config file */
    char data_eval_where[CONFIG_STR_MAX + 32];
    /* train */
    int train_steps;
    int train_seq_len;
    int train_micro_batch_size;
    int train_grad_accum;
    long long train_seed;
    char train_resume[CONFIG_STR_MAX]; /* none | auto | PATH */
    int train_activation_checkpointing;
    int train_max_nonfinite;           /* stop after this many non-finite steps in a row */
    int train_check_memory;            /* refuse a run that cannot fit (trainer/memory.h) */
    /* optim */
    float optim_lr;
    float optim_min_lr_ratio;
    float optim_weight_decay;
    float optim_beta1;
    float optim_beta2;
    float optim_eps;
    int optim_warmup_steps;
    char optim_schedule[16];           /* cosine | linear | constant */
    float optim_clip_grad_norm;        /* 0 = off */
    /* mixture of experts */
    float moe_bias_update_rate;        /* 0 = the score correction bias is frozen */
    float moe_balance_loss;            /* alpha of the sequence-wise balance loss; 0 = none */
    /* parallel */
    int parallel_tp;                   /* 0 = auto (world / dp; 1 when dp is auto) */
    int parallel_dp;                   /* 0 = auto (world / tp) */
    int parallel_ep;                   /* routed experts split over ep data-parallel ranks */
    int parallel_zero;                 /* 0 | 1 */
    /* checkpoint */
    char checkpoint_dir[CONFIG_STR_MAX]; /* empty = <run.dir>/checkpoints */
    int checkpoint_every;                /* 0 = only at the end */
    int checkpoint_keep;
    int checkpoint_keep_every;           /* also keep every N-th step; 0 = none */
    int checkpoint_async;
    char checkpoint_on_error[16];        /* stop | continue */
    /* export */
    int export_enabled;
    char export_dtype[8];                /* bf16 | fp16 | fp32 */
    char export_max_shard_size[32];
    /* eval */
    int eval_every;                    /* 0 = never during training */
    int eval_batches;
    /* task */
    char task_type[32];                /* causal_lm | classification */
    int task_num_labels;
    char task_labels[CONFIG_STR_MAX];  /* class names for the export's id2label, comma-separated */
    /* continual (trainer/continual.c) */
    char continual_tasks[CONFIG_STR_MAX]; /* YAML file listing the tasks; empty = one plain run */
    char continual_state[CONFIG_STR_MAX]; /* EWC + replay state to start from; empty = none */
    int continual_ewc_enabled;
    float continual_ewc_lambda;
    char continual_ewc_mode[16];          /* online | separate */
    float continual_ewc_gamma;
    char continual_ewc_decay[16];         /* anchor | zero: where weight decay pulls */
    char continual_ewc_fisher_type[16];   /* empirical | sampled | exact | identity */
    int continual_ewc_fisher_samples;
    int continual_ewc_fisher_batched;
    int continual_replay_capacity;        /* examples over all data-parallel ranks; 0 = off */
    float continual_replay_ratio;
    char continual_replay_policy[16];     /* reservoir | task_balanced */
    /* run / log */
    char run_dir[CONFIG_STR_MAX];      /* empty = runs/<date>-<time> */
    int run_save_final;                /* write <run.dir>/final.safetensors at the end */
    int run_overwrite;                 /* replace an earlier run in run.dir */
    int log_every;
    int log_config_full;               /* log.print_config */
    char device[16];                   /* cpu | cuda */
    char precision[8];                 /* auto | bf16 | fp32 | tf32: how a device backend computes */
    char cuda_attention[8];            /* cuda.attention: flash | mma | simple */
    char cuda_experts[8];              /* cuda.experts: streams | grouped | loop */
    char cuda_weight_copy[8];          /* cuda.weight_copy: auto | full | none */
    /* metrics endpoint (trainer/metrics_server.c) */
    char metrics_listen[256];          /* HOST:PORT; empty = off */
    int metrics_allow_remote;          /* allow a non-loopback listen address */
} Config;

/* Fill every field with its schema default. */
void config_set_defaults(Config *c);

/* Apply a YAML file over the current values. Errors: "FILE:LINE: key: problem", DS_ERR_INPUT. */
int config_load_yaml(Config *c, const char *path);

/* libyaml's scanner costs time quadratic in the nesting depth (a 200 KB file nested 100k deep
 * takes a minute), so every YAML file is first read as events up to max_depth levels: DS_OK,
 * or DS_ERR_INPUT "FILE:LINE: YAML nested deeper than N levels" after a bounded amount of work.
 * Also refuses what is not a regular file (a FIFO would block). Call before yaml_parser_load. */
#define CONFIG_YAML_MAX_DEPTH 32
int config_yaml_check_depth(const char *path, int max_depth);

/* Apply one "key.subkey=value" override (source names it in errors, e.g. "command line"). */
int config_apply_override(Config *c, const char *assignment, const char *source);

/* Cross-field checks after all sources are applied. */
int config_validate(const Config *c);

/* Write the resolved config as YAML; with_docs adds each key's doc as a comment. */
void config_write_yaml(const Config *c, FILE *out, int with_docs);

/* Write docs/config.md (markdown table of every key). */
void config_write_markdown(FILE *out);

/* Write one line per key (name, doc, type, default, range) for `--help`. */
void config_write_help(FILE *out);

#endif
