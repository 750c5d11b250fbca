/* plot.c: `dstrain plot RUN_DIR [-o FILE.png]`: reads RUN_DIR/metrics.jsonl and draws loss (and
 * eval loss), learning rate and throughput over steps as one PNG through gnuplot (a Debian
 * package; tools/install-deps.sh installs it). The data goes to gnuplot inline (datablocks), so
 * nothing but the PNG is written. Skipped (non-finite) steps are left out of the loss curve.
 * Paths reach gnuplot only inside single-quoted strings (no substitution happens there), and a
 * path holding a control character is refused: gnuplot ends a command at a newline. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "common.h"
#include "inspect.h"

typedef struct PlotSeries {
    double *step, *value;
    size_t n, cap;
} PlotSeries;

static int series_push(PlotSeries *s, double step, double value)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        double *a = realloc(s->step, cap * sizeof(double)), *b;
        if (!a) return ds_error(DS_ERR_INTERNAL, "plot: out of memory");
        s->step = a;
        if (!(b = realloc(s->value, cap * sizeof(double))))
            return ds_error(DS_ERR_INTERNAL, "plot: out of memory");
        s->value = b;
        s->cap = cap;
    }
    s->step[s->n] = step;
    s->value[s->n++] = value;
    return DS_OK;
}

static void series_free(PlotSeries *s)
{
    free(s->step);
    free(s->value);
}

enum { S_LOSS, S_EVAL, S_LR, S_TPS, S_COUNT };
static const char *const series_key[S_COUNT] = {"loss", "eval_loss", "lr", "tokens_per_second"};

static int read_metrics(const char *path, PlotSeries *series)
{
    FILE *f = ds_fopen_regular(path, "r");
    if (!f) return ds_error_context(DS_ERR_INPUT, "plot");
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int status = DS_OK;
    while (status == DS_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            /* the last line of a run still writing may be partial: skip it, name others */
            if (strchr(line, '\n'))
                status = ds_error(DS_ERR_INPUT, "plot: %s:%ld: not JSON", path, lineno);
            break;
        }
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
        for (int k = 0; k < S_COUNT && status == DS_OK && cJSON_IsNumber(step); k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, series_key[k]);
            if (cJSON_IsNumber(v) && isfinite(v->valuedouble))
                status = series_push(&series[k], step->valuedouble, v->valuedouble);
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    if (status == DS_OK && series[S_LOSS].n == 0)
        status = ds_error(DS_ERR_INPUT, "plot: %s: no step with a loss", path);
    return status;
}

static void write_block(FILE *g, const char *name, const PlotSeries *s)
{
    fprintf(g, "$%s << EOD\n", name);
    for (size_t i = 0; i < s->n; i++)
        fprintf(g, "%.9g %.9g\n", s->step[i], s->value[i]);
    if (s->n == 0) fprintf(g, "NaN NaN\n");
    fprintf(g, "EOD\n");
}

/* gnuplot quoting: single quotes, a quote doubled */
static void put_quoted(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', g);
        fputc(*s, g);
    }
    fputc('\'', g);
}

int plot_main(int argc, char **argv)
{
    const char *run_dir = NULL, *output = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: dstrain plot RUN_DIR [-o FILE.png]\n"
                   "  loss (and eval loss), learning rate and tokens/s over steps from\n"
                   "  RUN_DIR/metrics.jsonl; default output RUN_DIR/plot.png (needs gnuplot)\n");
            return DS_OK;
        }
        if (strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) {
            if (i + 1 >= argc)
                return ds_error(DS_ERR_INPUT, "plot: %s expects a file name", argv[i]);
            output = argv[++i];
        } else if (!run_dir) {
            run_dir = argv[i];
        } else {
            return ds_error(DS_ERR_INPUT, "plot: unexpected argument \"%s\"", argv[i]);
        }
    }
    if (!run_dir) return ds_error(DS_ERR_INPUT, "plot: expected RUN_DIR (see dstrain plot --help)");
    const char *pasted[2] = {run_dir, output};
    for (int i = 0; i < 2; i++) {
        char shown[600];
        if (pasted[i] && ds_has_control_chars(pasted[i]))
            return ds_error(DS_ERR_INPUT, "plot: \"%s\": a path with a control character",
                            ds_printable(shown, sizeof(shown), pasted[i], 200));
    }
    char metrics[2048], out_buf[2048];
    snprintf(metrics, sizeof(metrics), "%s/metrics.jsonl", run_dir);
    if (!output) {
        snprintf(out_buf, sizeof(out_buf), "%s/plot.png", run_dir);
        output = out_buf;
    }
    PlotSeries series[S_COUNT] = {0};
    int status = read_metrics(metrics, series);
    if (status != DS_OK) goto done;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        status = ds_error(DS_ERR_INPUT, "plot: gnuplot is not installed (tools/install-deps.sh "
                                        "installs it: apt-get install gnuplot-nox)");
        goto done;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        status = ds_error(DS_ERR_INTERNAL, "plot: cannot start gnuplot: %s", strerror(errno));
        goto done;
    }
    write_block(g, "loss", &series[S_LOSS]);
    write_block(g, "eval", &series[S_EVAL]);
    write_block(g, "lr", &series[S_LR]);
    write_block(g, "tps", &series[S_TPS]);
    fprintf(g, "set terminal pngcairo size 1200,900 font 'sans,10'\nset output ");
    put_quoted(g, output);
    fprintf(g, "\nset multiplot layout 3,1 title ");
    put_quoted(g, run_dir);
    fprintf(g,
            "\nset grid\nset key top right\nset xlabel 'step'\n"
            "set ylabel 'loss'\n"
            "plot $loss using 1:2 with lines lw 1.5 title 'train loss'%s\n"
            "set ylabel 'learning rate'\nset format y '%%.1e'\n"
            "plot $lr using 1:2 with lines lw 1.5 lc rgb '#2ca02c' title 'lr'\n"
            "set format y '%%g'\nset ylabel 'tokens/s'\n"
            "plot $tps using 1:2 with lines lw 1 lc rgb '#d62728' title 'tokens/s'\n"
            "unset multiplot\n",
            series[S_EVAL].n ? ", $eval using 1:2 with linespoints pt 7 lw 1.5 title 'eval loss'"
                             : "");
    int rc = pclose(g);
    if (rc != 0) {
        status = ds_error(DS_ERR_INTERNAL, "plot: gnuplot failed (exit %d) writing %s",
                          WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, output);
        goto done;
    }
    printf("dstrain: plot of %zu steps (%zu evaluations) written to %s\n", series[S_LOSS].n,
           series[S_EVAL].n, output);
done:
    for (int k = 0; k < S_COUNT; k++)
        series_free(&series[k]);
    return status;
}
