/* submit.c: `dstrain submit`: renders an sbatch script from slurm/templates and the config, and
 * submits it (or prints it with --dry-run). Researchers edit configs; the shell script is always
 * generated. The job's ranks come from parallel.tp x parallel.dp, and an auto layout is the
 * fewest GPUs whose memory estimate fits --gpu-mem (layout.c); the job passes the layout to the
 * trainer. The job requeues itself after a preemption checkpoint (exit 75) and resumes. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "config.h"
#include "layout.h"
#include "log.h"
#include "submit.h"
#include "train.h"

typedef struct SubmitOptions {
    const char *config_path;
    const char *overrides[64];
    int n_overrides;
    int nodes, gpus_per_node, tasks_per_node, cpus_per_task, signal_seconds; /* 0 = not given */
    int node_gpus;
    double gpu_mem_gib;
    const char *time, *partition, *qos, *job_name;
    int dry_run, layout_only;
} SubmitOptions;

static void submit_usage(FILE *out)
{
    fprintf(out,
            "usage: dstrain submit [-c CONFIG] [key=value ...] [--nodes N] [--gpus-per-node G]\n"
            "         [--tasks-per-node K] [--gpu-mem GIB] [--node-gpus M] [--cpus-per-task C]\n"
            "         [--time T] [--partition P] [--qos Q] [--job-name NAME]\n"
            "         [--signal-seconds S] [--dry-run | --layout]\n"
            "  Renders the sbatch script (slurm/templates) and submits it with sbatch, printing\n"
            "  the job id; --dry-run prints the script instead. One rank per GPU (device: cuda),\n"
            "  tp x dp ranks in all: parallel.tp x parallel.dp from the config; where either is\n"
            "  auto, the fewest GPUs whose memory estimate per GPU fits --gpu-mem GIB (default\n"
            "  80), on nodes of at most --node-gpus GPUs (default 8), the smaller dp first.\n"
            "  --nodes and --gpus-per-node (or --tasks-per-node) fix the job's ranks instead.\n"
            "  On the CPU an auto layout is one rank (or --tasks-per-node). --layout prints\n"
            "  the layout as one line (tp=.. dp=.. nodes=.. tasks_per_node=.. gpus_per_node=..\n"
            "  gib_per_gpu=..) and submits nothing.\n");
}

static int parse_gib(const char *flag, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (!*text || *end || errno || !(v > 0) || v > 1e6)
        return ds_error(DS_ERR_INPUT, "submit: %s: expected GiB, a number > 0, got \"%s\"", flag,
                        text);
    *out = v;
    return DS_OK;
}

static int parse_count(const char *flag, const char *text, int min, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (!*text || *end || errno || v < min || v > 100000)
        return ds_error(DS_ERR_INPUT, "submit: %s: expected an integer >= %d, got \"%s\"", flag,
                        min, text);
    *out = (int)v;
    return DS_OK;
}

/* Slurm accepts "minutes", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS". */
static int check_time(const char *t)
{
    int colons = 0, dash = 0, digits = 0;
    for (const char *p = t; *p; p++) {
        if (*p >= '0' && *p <= '9') digits++;
        else if (*p == ':') colons++;
        else if (*p == '-' && !dash && digits) dash++;
        else digits = -1000;
    }
    if (digits <= 0 || colons > 2)
        return ds_error(DS_ERR_INPUT,
                        "submit: --time: expected minutes, HH:MM:SS or D-HH:MM:SS, got \"%s\"", t);
    return DS_OK;
}

/* Names that go into #SBATCH lines unquoted: letters, digits and -_.: only. */
static int check_word(const char *flag, const char *v)
{
    if (!*v) return ds_error(DS_ERR_INPUT, "submit: %s: must not be empty", flag);
    for (const char *p = v; *p; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.' || *p == ':'))
            return ds_error(DS_ERR_INPUT, "submit: %s: \"%s\" has a character other than "
                                          "letters, digits and -_.:", flag, v);
    return DS_OK;
}

/* Append s to buf as one single-quoted shell word; DS_ERR_INPUT when it does not fit (a cut
 * word would change the command). */
static int shell_quote_append(char *buf, size_t size, const char *s)
{
    size_t n = strlen(buf);
    if (n + 3 > size) goto too_long;
    buf[n++] = '\'';
    for (; *s; s++) {
        if (n + 6 > size) goto too_long;
        if (*s == '\'') {
            memcpy(buf + n, "'\\''", 4);
            n += 4;
        } else {
            buf[n++] = *s;
        }
    }
    buf[n++] = '\'';
    buf[n] = 0;
    return DS_OK;
too_long:
    return ds_error(DS_ERR_INPUT, "submit: the sbatch command line is longer than %zu bytes",
                    size - 1);
}

/* Values pasted into the script: a control character (a newline above all) would start a new
 * shell command or #SBATCH line whatever the quoting, so paths holding one are refused. */
static int check_script_value(const char *what, const char *v)
{
    char shown[600];
    if (ds_has_control_chars(v))
        return ds_error(DS_ERR_INPUT, "submit: %s: \"%s\" holds a control character", what,
                        ds_printable(shown, sizeof(shown), v, 200));
    return DS_OK;
}

/* #SBATCH --output=... is read by sbatch, not the shell: its own double quotes and backslash
 * escapes apply, and '%' starts a file name pattern, so a log directory with one is refused. */
static int sbatch_quote(char *out, size_t size, const char *what, const char *s)
{
    char shown[600];
    if (strchr(s, '%'))
        return ds_error(DS_ERR_INPUT, "submit: %s: \"%s\" holds a '%%', which sbatch reads as a "
                                      "file name pattern", what,
                        ds_printable(shown, sizeof(shown), s, 200));
    size_t n = 0;
    out[n++] = '"';
    for (; *s; s++) {
        if (n + 4 > size)
            return ds_error(DS_ERR_INPUT, "submit: %s: longer than %zu bytes", what, size / 2);
        if (*s == '"' || *s == '\\') out[n++] = '\\';
        out[n++] = *s;
    }
    out[n++] = '"';
    out[n] = 0;
    return DS_OK;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        ds_error(DS_ERR_INTERNAL, "%s: cannot open the sbatch template: %s", path, strerror(errno));
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = ds_malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
        ds_error(DS_ERR_INTERNAL, "%s: short read", path);
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

typedef struct Placeholder {
    const char *name;
    char value[8192];
} Placeholder;

/* Replace every @NAME@ of the table; unknown @...@ sequences are left as they are. */
static void render(FILE *out, const char *tmpl, const Placeholder *ph, int count)
{
    for (const char *p = tmpl; *p;) {
        int matched = 0;
        if (*p == '@') {
            for (int i = 0; i < count; i++) {
                size_t len = strlen(ph[i].name);
                if (strncmp(p + 1, ph[i].name, len) == 0 && p[1 + len] == '@') {
                    fputs(ph[i].value, out);
                    p += len + 2;
                    matched = 1;
                    break;
                }
            }
        }
        if (!matched) fputc(*p++, out);
    }
}

int submit_render(const SubmitRequest *rq, FILE *out)
{
    char tmpl_path[PATH_MAX];
    snprintf(tmpl_path, sizeof(tmpl_path), "%s/slurm/templates/%s", rq->slurm_dir,
             rq->nodes > 1 ? "multi-node.sbatch" : "single-node.sbatch");
    char *tmpl = read_file(tmpl_path);
    if (!tmpl) return DS_ERR_INTERNAL;
    static Placeholder ph[16];
    int n = 0;
#define SET(key, ...) (snprintf(ph[n].value, sizeof(ph[n].value), __VA_ARGS__), ph[n++].name = key)
    SET("JOB_NAME", "%s", rq->job_name);
    SET("NODES", "%d", rq->nodes);
    SET("TASKS_PER_NODE", "%d", rq->tasks_per_node);
    SET("CPUS_PER_TASK", "%d", rq->cpus_per_task);
    if (rq->gpus_per_node > 0) SET("GPU_LINE", "#SBATCH --gpus-per-node=%d", rq->gpus_per_node);
    else SET("GPU_LINE", "%s", "");
    if (rq->time && *rq->time) SET("TIME_LINE", "#SBATCH --time=%s", rq->time);
    else SET("TIME_LINE", "%s", "");
    if (rq->partition && *rq->partition) SET("PARTITION_LINE", "#SBATCH --partition=%s", rq->partition);
    else SET("PARTITION_LINE", "%s", "");
    if (rq->qos && *rq->qos) SET("QOS_LINE", "#SBATCH --qos=%s", rq->qos);
    else SET("QOS_LINE", "%s", "");
    SET("SIGNAL_SECONDS", "%d", rq->signal_seconds);
    /* every path is quoted for its reader: sbatch for the log directory, bash for the rest */
    int status = DS_OK;
    const struct {
        const char *name, *what, *value;
    } paths[] = {{"LOG_DIR", "run.dir", rq->run_root},
                 {"RUN_ROOT", "run.dir", rq->run_root},
                 {"WORK_DIR", "the working directory", rq->work_dir},
                 {"DSTRAIN", "the dstrain binary", rq->dstrain}};
    for (size_t i = 0; i < DS_ARRAY_LEN(paths) && status == DS_OK; i++) {
        status = check_script_value(paths[i].what, paths[i].value);
        if (status != DS_OK) break;
        ph[n].value[0] = 0;
        if (i == 0)
            status = sbatch_quote(ph[n].value, sizeof(ph[n].value), paths[i].what, paths[i].value);
        else
            status = shell_quote_append(ph[n].value, sizeof(ph[n].value), paths[i].value);
        ph[n++].name = paths[i].name;
    }
    if (status != DS_OK) {
        free(tmpl);
        return status;
    }
    SET("CONFIG_ARGS", "%s", rq->config_args);
#undef SET
    render(out, tmpl, ph, n);
    free(tmpl);
    return DS_OK;
}

static int absolute_path(const char *path, char *out, size_t size)
{
    if (path[0] == '/') {
        snprintf(out, size, "%s", path);
        return DS_OK;
    }
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return ds_error(DS_ERR_INTERNAL, "submit: getcwd: %s", strerror(errno));
    snprintf(out, size, "%s/%s", cwd, path);
    return DS_OK;
}

int submit_main(int argc, char **argv)
{
    SubmitOptions o = {.gpus_per_node = -1, .signal_seconds = 120, .node_gpus = 8,
                       .gpu_mem_gib = 80};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            submit_usage(stdout);
            return DS_OK;
        }
        if (!strcmp(a, "--dry-run")) {
            o.dry_run = 1;
            continue;
        }
        if (!strcmp(a, "--layout")) {
            o.layout_only = 1;
            continue;
        }
        if (a[0] != '-') {
            if (!strchr(a, '='))
                return ds_error(DS_ERR_INPUT, "submit: \"%s\": expected key=value or an option", a);
            if (o.n_overrides == (int)DS_ARRAY_LEN(o.overrides))
                return ds_error(DS_ERR_INPUT, "submit: too many key=value overrides");
            o.overrides[o.n_overrides++] = a;
            continue;
        }
        if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "submit: %s expects a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-c") || !strcmp(a, "--config")) o.config_path = v;
        else if (!strcmp(a, "--nodes")) DS_TRY(parse_count(a, v, 1, &o.nodes));
        else if (!strcmp(a, "--gpus-per-node")) DS_TRY(parse_count(a, v, 0, &o.gpus_per_node));
        else if (!strcmp(a, "--tasks-per-node")) DS_TRY(parse_count(a, v, 1, &o.tasks_per_node));
        else if (!strcmp(a, "--cpus-per-task")) DS_TRY(parse_count(a, v, 1, &o.cpus_per_task));
        else if (!strcmp(a, "--gpu-mem")) DS_TRY(parse_gib(a, v, &o.gpu_mem_gib));
        else if (!strcmp(a, "--node-gpus")) DS_TRY(parse_count(a, v, 1, &o.node_gpus));
        else if (!strcmp(a, "--signal-seconds")) DS_TRY(parse_count(a, v, 1, &o.signal_seconds));
        else if (!strcmp(a, "--time")) DS_TRY(check_time(o.time = v));
        else if (!strcmp(a, "--partition")) DS_TRY(check_word(a, o.partition = v));
        else if (!strcmp(a, "--qos")) DS_TRY(check_word(a, o.qos = v));
        else if (!strcmp(a, "--job-name")) DS_TRY(check_word(a, o.job_name = v));
        else return ds_error(DS_ERR_INPUT, "submit: unknown option %s (see dstrain submit --help)", a);
    }
    if (o.gpus_per_node > 0 && o.tasks_per_node > 0 && o.tasks_per_node != o.gpus_per_node)
        return ds_error(DS_ERR_INPUT, "submit: --tasks-per-node %d differs from --gpus-per-node "
                                      "%d: dstrain runs one task per GPU",
                        o.tasks_per_node, o.gpus_per_node);

    /* The config is checked now, so that a mistake fails here and not in the queue. */
    Config cfg;
    config_set_defaults(&cfg);
    if (o.config_path) DS_TRY(config_load_yaml(&cfg, o.config_path));
    for (int i = 0; i < o.n_overrides; i++)
        DS_TRY(config_apply_override(&cfg, o.overrides[i], "command line"));
    DS_TRY(config_validate(&cfg));
    const int cuda = strcmp(cfg.device, "cuda") == 0;
    if (o.gpus_per_node > 0 && !cuda)
        progress_warn("submit: --gpus-per-node %d with device: %s: the job holds GPUs it will not "
                      "use (set device=cuda, or leave --gpus-per-node out)",
                      o.gpus_per_node, cfg.device);

    /* The layout: the job's ranks are tp x dp. Options that fix the ranks per node make the
     * world; otherwise the config's layout does, and an auto one is sized from the estimate. */
    ModelConfig mc;
    DS_TRY(train_model_config(&cfg, &mc));
    if (strcmp(cfg.task_type, "classification") == 0) mc.num_labels = cfg.task_num_labels;
    const int per_node = o.gpus_per_node > 0 ? o.gpus_per_node : o.tasks_per_node;
    const double GiB = 1024.0 * 1024.0 * 1024.0;
    LayoutRequest lr = {.tp = cfg.parallel_tp,
                        .dp = cfg.parallel_dp,
                        .world = per_node > 0 ? (o.nodes ? o.nodes : 1) * per_node : 0,
                        .nodes = o.nodes,
                        .node_ranks = !cuda ? 4096 : per_node > o.node_gpus ? per_node : o.node_gpus,
                        .budget = cuda ? o.gpu_mem_gib * GiB : 0};
    Layout lay;
    DS_TRY(layout_choose(&cfg, &mc, &lr, &lay));
    const RunMemory *mem = &lay.memory;
    const char *why = lr.world                          ? "the job's ranks"
                      : cfg.parallel_tp && cfg.parallel_dp ? "the config's"
                      : cuda ? "the fewest GPUs that fit --gpu-mem"
                             : "the fewest ranks: auto on the CPU";
    /* the figures in GiB, or MiB for a small model */
    const double unit = mem->total >= GiB ? GiB : GiB / 1024;
    const char *unit_name = mem->total >= GiB ? "GiB" : "MiB";
    char ewc[64] = "", fisher[64] = "", bf16[64] = "";
    if (mem->ewc > 0) snprintf(ewc, sizeof(ewc), ", EWC %.1f", mem->ewc / unit);
    if (mem->fisher_model > 0)
        snprintf(fisher, sizeof(fisher), ", Fisher pass model %.1f", mem->fisher_model / unit);
    if (mem->weights_bf16 > 0)
        snprintf(bf16, sizeof(bf16), ", bf16 weights %.1f", mem->weights_bf16 / unit);
    fprintf(stderr,
            "dstrain: submit: layout tp %d x dp %d (%s) on %d node%s x %d %s; estimate %.1f %s "
            "per rank (parameters %.1f, gradients %.1f, optimizer %.1f, activations %.1f%s%s%s)\n",
            lay.tp, lay.dp, why, lay.nodes, lay.nodes > 1 ? "s" : "", lay.ranks_per_node,
            cuda ? (lay.ranks_per_node > 1 ? "GPUs" : "GPU")
                 : (lay.ranks_per_node > 1 ? "ranks" : "rank"),
            mem->total / unit, unit_name, mem->params / unit, mem->grads / unit,
            mem->optimizer / unit, mem->activations / unit, ewc, fisher, bf16);
    if (cuda && !lay.fits)
        progress_warn("submit: parallel.tp x parallel.dp = %d x %d: the estimate, %.1f GiB per GPU, "
                      "is more than --gpu-mem %g GiB",
                      lay.tp, lay.dp, mem->total / GiB, o.gpu_mem_gib);
    const int job_gpus = cuda ? lay.ranks_per_node : o.gpus_per_node > 0 ? o.gpus_per_node : 0;
    if (o.layout_only) {
        printf("tp=%d dp=%d nodes=%d tasks_per_node=%d gpus_per_node=%d gib_per_gpu=%.2f\n",
               lay.tp, lay.dp, lay.nodes, lay.ranks_per_node, job_gpus, mem->total / GiB);
        return DS_OK;
    }

    SubmitRequest rq = {0};
    rq.nodes = lay.nodes;
    rq.gpus_per_node = job_gpus;
    rq.tasks_per_node = lay.ranks_per_node;
    rq.cpus_per_task = o.cpus_per_task ? o.cpus_per_task : (job_gpus > 0 ? 8 : 1);
    rq.signal_seconds = o.signal_seconds;
    rq.time = o.time;
    rq.partition = o.partition;
    rq.qos = o.qos;
    rq.slurm_dir = DSTRAIN_SOURCE_DIR;
    char job_name[128] = "dstrain";
    if (o.job_name) {
        snprintf(job_name, sizeof(job_name), "%s", o.job_name);
    } else if (o.config_path) { /* the config's base name, made safe for #SBATCH */
        const char *base = strrchr(o.config_path, '/');
        snprintf(job_name, sizeof(job_name), "%s", base ? base + 1 : o.config_path);
        char *dot = strrchr(job_name, '.');
        if (dot && dot != job_name) *dot = 0;
        for (char *p = job_name; *p; p++)
            if (check_word("", (char[]){*p, 0}) != DS_OK) *p = '_';
    }
    rq.job_name = job_name;
    static char run_root[PATH_MAX], work_dir[PATH_MAX], dstrain[PATH_MAX], args[16384];
    DS_TRY(absolute_path(cfg.run_dir[0] ? cfg.run_dir : "runs", run_root, sizeof(run_root)));
    if (!getcwd(work_dir, sizeof(work_dir)))
        return ds_error(DS_ERR_INTERNAL, "submit: getcwd: %s", strerror(errno));
    ssize_t len = readlink("/proc/self/exe", dstrain, sizeof(dstrain) - 1);
    if (len <= 0) return ds_error(DS_ERR_INTERNAL, "submit: cannot find the dstrain binary");
    dstrain[len] = 0;
    rq.run_root = run_root;
    rq.work_dir = work_dir;
    rq.dstrain = dstrain;
    args[0] = 0;
    if (o.config_path) {
        char abs_cfg[PATH_MAX];
        DS_TRY(absolute_path(o.config_path, abs_cfg, sizeof(abs_cfg)));
        DS_TRY(check_script_value("the config path", abs_cfg));
        strncat(args, "-c ", sizeof(args) - strlen(args) - 1);
        DS_TRY(shell_quote_append(args, sizeof(args), abs_cfg));
    }
    for (int i = 0; i < o.n_overrides; i++) {
        if (!strncmp(o.overrides[i], "run.dir=", 8) || !strncmp(o.overrides[i], "train.resume=", 13))
            continue; /* the job sets both: one run directory per job, resumed after requeue */
        if (!strncmp(o.overrides[i], "parallel.tp=", 12) || !strncmp(o.overrides[i], "parallel.dp=", 12))
            continue; /* the layout below replaces them */
        DS_TRY(check_script_value("an override", o.overrides[i]));
        strncat(args, " ", sizeof(args) - strlen(args) - 1);
        DS_TRY(shell_quote_append(args, sizeof(args), o.overrides[i]));
    }
    /* the layout as chosen, so that the job's ranks and the trainer's grid agree */
    const size_t used = strlen(args);
    if ((size_t)snprintf(args + used, sizeof(args) - used, "%sparallel.tp=%d parallel.dp=%d",
                         used ? " " : "", lay.tp, lay.dp) >= sizeof(args) - used)
        return ds_error(DS_ERR_INPUT, "submit: the trainer's arguments are longer than %zu bytes",
                        sizeof(args) - 1);
    rq.config_args = args;

    if (o.dry_run) return submit_render(&rq, stdout);

    if (mkdir(run_root, 0755) != 0 && errno != EEXIST)
        return ds_error(DS_ERR_INPUT, "run.dir: cannot create %s: %s", run_root, strerror(errno));
    char script[PATH_MAX + 64];
    snprintf(script, sizeof(script), "%s/%s.sbatch", run_root, job_name);
    FILE *f = ds_fopen_nofollow(script, 0);
    if (!f) return DS_ERR_INPUT;
    int status = submit_render(&rq, f);
    if (fclose(f) != 0 && status == DS_OK)
        status = ds_error(DS_ERR_INTERNAL, "%s: %s", script, strerror(errno));
    DS_TRY(status);
    char cmd[4 * PATH_MAX + 128] = "sbatch --parsable ";
    DS_TRY(shell_quote_append(cmd, sizeof(cmd), script));
    FILE *p = popen(cmd, "r");
    if (!p) return ds_error(DS_ERR_INTERNAL, "submit: cannot run sbatch: %s", strerror(errno));
    char line[256] = "";
    if (!fgets(line, sizeof(line), p)) line[0] = 0;
    int rc = pclose(p);
    line[strcspn(line, ";\r\n")] = 0;
    if (rc != 0 || !line[0])
        return ds_error(DS_ERR_INPUT, "submit: sbatch failed for %s (exit %d)", script,
                        WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    printf("%s\n", line);
    fprintf(stderr, "dstrain: submitted job %s (script %s, log %s/%s-%s.log)\n", line, script,
            run_root, job_name, line);
    return DS_OK;
}
