/* main.c: the dstrain command line. Each subcommand returns a status; this is the one place
 * that prints errors ("dstrain: error: ...") and turns a status into the exit code
 * (0 done, 1 internal failure, 2 bad input or config, 75 checkpointed and asking to be requeued). */
#include <stdio.h>
#include <string.h>

#include "../checkpoint/export.h"
#include "../data/pack.h"
#include "common.h"
#include "config.h"
#include "inspect.h"
#include "submit.h"
#include "train.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dstrain <command> [options]\n"
            "commands:\n"
            "  train [-c CONFIG] [key=value ...]   train or fine-tune (no arguments: the tiny\n"
            "                                      preset on the bundled dataset)\n"
            "  eval --model DIR --data FILE.h5     mean next-token loss of a model on a dataset\n"
            "  pack --input F.jsonl --output F.h5  token-id JSONL to the HDF5 layout\n"
            "  export --checkpoint DIR --output D  a checkpoint as a Hugging Face model directory\n"
            "  submit [-c CONFIG] [--nodes N ...]  render and submit a Slurm job (--dry-run prints)\n"
            "  info PATH                           what is in a checkpoint, model dir, dataset\n"
            "  plot RUN_DIR [-o FILE.png]          loss, eval loss, lr, throughput as a PNG\n"
            "  generate --model DIR --prompt TEXT  greedy or top-p sampling from a model\n"
            "  config --defaults | --docs          the complete commented default config, or\n"
            "                                      the markdown reference of every key\n"
            "exit codes: 0 done, 1 internal failure, 2 bad input or config, 75 checkpointed,\n"
            "            please requeue\n");
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
    } else {
        usage(stderr);
        status = ds_error(DS_ERR_INPUT, "unknown command \"%s\"", cmd);
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
