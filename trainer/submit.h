/* submit.h: `dstrain submit` (sbatch script rendering and submission). */
#ifndef DSTRAIN_SUBMIT_H
#define DSTRAIN_SUBMIT_H

#include <stdio.h>

typedef struct SubmitRequest {
    const char *job_name;
    int nodes, gpus_per_node, tasks_per_node, cpus_per_task, signal_seconds;
    const char *time, *partition, *qos; /* NULL or empty: not set */
    const char *slurm_dir;              /* where slurm/templates lives */
    const char *run_root, *work_dir, *dstrain;
    const char *config_args;            /* already shell-quoted */
} SubmitRequest;

int submit_render(const SubmitRequest *rq, FILE *out);
int submit_main(int argc, char **argv);

#endif
