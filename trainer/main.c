/* main.c: the dstrain command line. Each subcommand returns a status; this is the one place
 * that prints errors ("dstrain: error: ...") and turns a status into the exit code
 * (0 done, 1 internal failure, 2 bad input or config, 75 checkpointed and asking to be requeued).
 */
#include <stdio.h>
#include <string.h>

#include "../checkpoint/export.h"
#include "../data/pack.h"
#include "common.h"
#include "config.h"
#include "inspect.h"
#include "submit.h"
#include "train.h"

#define DSTRAIN_VERSION "0.1.0"

static const char *const commands[] = {"train", "eval", "pack",     "export", "submit",
                                       "info",  "plot", "generate", "config", "help"};

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: dstrain <command> [options]      (dstrain <command> --help for its options)\n"
        "commands:\n"
        "  train [-c CONFIG] [key=value ...]   train or fine-tune (no arguments: the tiny\n"
        "                                      preset on the bundled dataset)\n"
        "  eval --model DIR --data FILE.h5     mean next-token loss of a model on a dataset\n"
        "  pack --input F.jsonl --output F.h5  token-id JSONL to the HDF5 layout (text to\n"
        "                                      token ids: tools/tokenize_jsonl.py)\n"
        "  export --checkpoint DIR --output D  a checkpoint as a Hugging Face model directory\n"
        "  submit [-c CONFIG] [--nodes N ...]  render and submit a Slurm job (--dry-run prints)\n"
        "  info PATH                           what is in a checkpoint, model dir, dataset\n"
        "  plot DIR [-o FILE.png]              a run's losses, lr, throughput, or a nightly\n"
        "                                      state's history matrix, as a PNG\n"
        "  generate --model DIR --prompt TEXT  greedy or top-p sampling from a model\n"
        "  config --defaults | --docs          the complete commented default config, or\n"
        "                                      the markdown reference of every key\n"
        "A model DIR is a Hugging Face model directory, a checkpoint (step-N), a checkpoint\n"
        "directory or a run directory, for every command that reads one.\n"
        "exit codes: 0 done, 1 internal failure, 2 bad input or config, 75 checkpointed,\n"
        "            please requeue\n"
        "dstrain --version: the version and the backends built in.\n");
}

static void print_version(void)
{
    printf("dstrain %s (CPU backend: fp32, OpenBLAS, OpenMP; CUDA backend: %s; NCCL: %s)\n",
           DSTRAIN_VERSION,
#ifdef DSTRAIN_HAVE_CUDA
           "built",
#else
           "not built",
#endif
#ifdef DSTRAIN_HAVE_NCCL
           "built"
#else
           "not built"
#endif
    );
}

/* Edit distance with adjacent transpositions counted as one edit ("trian" is 1 from "train"). */
static int command_distance(const char *a, const char *b)
{
    const size_t la = strlen(a), lb = strlen(b);
    if (la > 32 || lb > 32) return 99;
    int d[33][33];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb];
}

/* The command closest to a mistyped one (at most 2 edits, fewer for short words), or NULL. */
static const char *closest_command(const char *typed)
{
    const char *best = NULL;
    int best_d = 99;
    const int limit = strlen(typed) <= 4 ? 1 : 2;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const int d = command_distance(typed, commands[i]);
        if (d < best_d) best_d = d, best = commands[i];
    }
    return best_d <= limit ? best : NULL;
}

static int config_main(int argc, char **argv)
{
    Config cfg;
    config_set_defaults(&cfg);
    if (argc == 2 && strcmp(argv[1], "--defaults") == 0) {
        config_write_yaml(&cfg, stdout, 1);
        return DS_OK;
    }
    if (argc == 2 && strcmp(argv[1], "--docs") == 0) {
        config_write_markdown(stdout);
        return DS_OK;
    }
    return ds_error(DS_ERR_INPUT, "config: expected --defaults or --docs");
}

int main(int argc, char **argv)
{
    int status;
    const char *cmd = argc > 1 ? argv[1] : "train";
    if (argc == 1) {
        char *default_argv[] = {"train", NULL};
        status = train_main(1, default_argv);
    } else if (strcmp(cmd, "train") == 0) {
        status = train_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "eval") == 0) {
        status = eval_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "export") == 0) {
        status = export_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "pack") == 0) {
        status = pack_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "submit") == 0) {
        status = submit_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "info") == 0) {
        status = info_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "plot") == 0) {
        status = plot_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "generate") == 0) {
        status = generate_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "config") == 0) {
        status = config_main(argc - 1, argv + 1);
    } else if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    } else if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0 ||
               strcmp(cmd, "version") == 0) {
        print_version();
        return 0;
    } else {
        const char *near = cmd[0] == '-' ? NULL : closest_command(cmd);
        char shown[128];
        if (near)
            status = ds_error(DS_ERR_INPUT,
                              "unknown command \"%s\": did you mean %s? (dstrain --help lists the "
                              "commands)",
                              ds_printable(shown, sizeof(shown), cmd, 60), near);
        else {
            usage(stderr);
            status = ds_error(DS_ERR_INPUT, "unknown command \"%s\"",
                              ds_printable(shown, sizeof(shown), cmd, 60));
        }
    }
    if (status == DS_EXIT_REQUEUE) {
        fflush(stdout);
        fprintf(stderr, "dstrain: %s\n", ds_last_error());
    } else if (status != DS_OK) {
        fflush(stdout);
        fprintf(stderr, "dstrain: error: %s\n", ds_last_error());
    }
    return status;
}
