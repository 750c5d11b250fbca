/* plot.c: `dstrain plot DIR [-o FILE.png]`: for a run directory, reads DIR/metrics.jsonl and
 * draws loss (and eval loss), learning rate and throughput over steps; for a nightly state
 * directory (slurm/nightly.sh), reads DIR/history-matrix.tsv and draws each published version's
 * held-out loss on every night's held-out set, as lines over versions and as a heatmap. One PNG
 * through gnuplot (a Debian package; tools/install-deps.sh installs it). The data goes to gnuplot
 * inline (datablocks), so nothing but the PNG is written. Skipped (non-finite) steps are left
 * out of the loss curve. Paths and set names reach gnuplot only inside single-quoted strings (no
 * substitution happens there), and one holding a control character is refused: gnuplot ends a
 * command at a newline. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* gnuplot, or the one line that says how to install it */
static int gnuplot_open(FILE **g)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0)
        return ds_error(DS_ERR_INPUT, "plot: gnuplot is not installed (tools/install-deps.sh "
                                      "installs it: apt-get install gnuplot-nox)");
    *g = popen("gnuplot", "w");
    if (!*g) return ds_error(DS_ERR_INTERNAL, "plot: cannot start gnuplot: %s", strerror(errno));
    return DS_OK;
}

static int gnuplot_close(FILE *g, const char *output)
{
    int rc = pclose(g);
    if (rc != 0)
        return ds_error(DS_ERR_INTERNAL, "plot: gnuplot failed (exit %d) writing %s",
                        WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, output);
    return DS_OK;
}

/* ---- a run directory: metrics.jsonl ---------------------------------------------------------- */

static int plot_run(const char *run_dir, const char *output)
{
    char metrics[2048];
    snprintf(metrics, sizeof(metrics), "%s/metrics.jsonl", run_dir);
    PlotSeries series[S_COUNT] = {0};
    FILE *g = NULL;
    int status = read_metrics(metrics, series);
    if (status == DS_OK) status = gnuplot_open(&g);
    if (status != DS_OK) goto done;
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
    if ((status = gnuplot_close(g, output)) == DS_OK)
        printf("dstrain: plot of %zu steps (%zu evaluations) written to %s\n", series[S_LOSS].n,
               series[S_EVAL].n, output);
done:
    for (int k = 0; k < S_COUNT; k++)
        series_free(&series[k]);
    return status;
}

/* ---- a nightly state directory: history-matrix.tsv ------------------------------------------- */

/* nightly.sh's matrix: a header "version<TAB>set...", then one row per published version, the
 * version's held-out loss on each set or "-" where it was not evaluated. */
typedef struct HistoryMatrix {
    int rows, cols;
    char **sets;     /* [cols] */
    long *versions;  /* [rows] */
    double *loss;    /* [rows x cols], NAN where not evaluated */
} HistoryMatrix;

#define HISTORY_MAX_SETS 100000
#define HISTORY_MAX_ROWS 1000000

static void history_free(HistoryMatrix *h)
{
    for (int c = 0; h->sets && c < h->cols; c++)
        free(h->sets[c]);
    free(h->sets);
    free(h->versions);
    free(h->loss);
    memset(h, 0, sizeof(*h));
}

/* Split line (its newline already cut) at tabs, in place; the count of fields. */
static int split_tabs(char *line, char ***fields, int *cap)
{
    int n = 0;
    for (char *p = line;; n++) {
        if (n == *cap) {
            int grown = *cap ? 2 * *cap : 64;
            char **f = realloc(*fields, (size_t)grown * sizeof(char *));
            if (!f) return -1;
            *fields = f;
            *cap = grown;
        }
        (*fields)[n] = p;
        char *tab = strchr(p, '\t');
        if (!tab) return n + 1;
        *tab = 0;
        p = tab + 1;
    }
}

static int read_history(const char *path, HistoryMatrix *h)
{
    memset(h, 0, sizeof(*h));
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT)
        return ds_error(DS_ERR_INPUT,
                        "plot: %s: missing: no night of this state directory has published a "
                        "version yet",
                        path);
    FILE *f = ds_fopen_regular(path, "r");
    if (!f) return ds_error_context(DS_ERR_INPUT, "plot");
    char *line = NULL, **field = NULL, shown[256];
    size_t cap = 0;
    int field_cap = 0, status = DS_OK, row_cap = 0;
    long lineno = 0;
    ssize_t len;
    while (status == DS_OK && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] == '\n') line[--len] = 0;
        if (len == 0) { /* a blank line: only at the end */
            status = ds_error(DS_ERR_INPUT, "plot: %s:%ld: an empty line", path, lineno);
            break;
        }
        const int n = split_tabs(line, &field, &field_cap);
        if (n < 0) {
            status = ds_error(DS_ERR_INTERNAL, "plot: out of memory");
            break;
        }
        for (int i = 0; i < n && status == DS_OK; i++) /* tabs separate; nothing else may */
            if (ds_has_control_chars(field[i]))
                status = ds_error(DS_ERR_INPUT, "plot: %s:%ld: field %d: a control character in "
                                                "\"%s\"",
                                  path, lineno, i + 1,
                                  ds_printable(shown, sizeof(shown), field[i], 80));
        if (status != DS_OK) break;
        if (lineno == 1) { /* the header */
            if (strcmp(field[0], "version") != 0 || n < 2 || n - 1 > HISTORY_MAX_SETS) {
                status = ds_error(DS_ERR_INPUT,
                                  "plot: %s:1: expected the header \"version<TAB>set...\" of "
                                  "nightly.sh's history matrix, got \"%s\"",
                                  path, ds_printable(shown, sizeof(shown), field[0], 60));
                break;
            }
            h->cols = n - 1;
            if (!(h->sets = calloc((size_t)h->cols, sizeof(char *)))) {
                status = ds_error(DS_ERR_INTERNAL, "plot: out of memory");
                break;
            }
            for (int c = 0; c < h->cols && status == DS_OK; c++) {
                if (!field[c + 1][0])
                    status = ds_error(DS_ERR_INPUT, "plot: %s:1: held-out set %d has no name",
                                      path, c + 1);
                else if (!(h->sets[c] = strdup(field[c + 1])))
                    status = ds_error(DS_ERR_INTERNAL, "plot: out of memory");
            }
            continue;
        }
        if (n != h->cols + 1) {
            status = ds_error(DS_ERR_INPUT,
                              "plot: %s:%ld: %d tab-separated fields, expected %d (version and "
                              "the header's %d sets)",
                              path, lineno, n, h->cols + 1, h->cols);
            break;
        }
        char *end;
        errno = 0;
        long version = strtol(field[0], &end, 10);
        if (!field[0][0] || *end || errno || version < 1 || field[0][0] == '+') {
            status = ds_error(DS_ERR_INPUT, "plot: %s:%ld: version: expected a positive integer, "
                                            "got \"%s\"",
                              path, lineno, ds_printable(shown, sizeof(shown), field[0], 60));
            break;
        }
        if (h->rows == row_cap) {
            if (row_cap == HISTORY_MAX_ROWS) {
                status = ds_error(DS_ERR_INPUT, "plot: %s: more than %d versions", path,
                                  HISTORY_MAX_ROWS);
                break;
            }
            int grown = row_cap ? 2 * row_cap : 64;
            long *v = realloc(h->versions, (size_t)grown * sizeof(long));
            if (v) h->versions = v;
            double *l = v ? realloc(h->loss, (size_t)grown * h->cols * sizeof(double)) : NULL;
            if (!l) {
                status = ds_error(DS_ERR_INTERNAL, "plot: out of memory");
                break;
            }
            h->loss = l;
            row_cap = grown;
        }
        h->versions[h->rows] = version;
        for (int c = 0; c < h->cols && status == DS_OK; c++) {
            const char *t = field[c + 1];
            double v = NAN;
            if (strcmp(t, "-") != 0) {
                errno = 0;
                v = strtod(t, &end);
                if (!*t || *end || errno || !isfinite(v))
                    status = ds_error(DS_ERR_INPUT,
                                      "plot: %s:%ld: set %s: expected a loss or -, got \"%s\"",
                                      path, lineno, h->sets[c],
                                      ds_printable(shown, sizeof(shown), t, 60));
            }
            h->loss[(size_t)h->rows * h->cols + c] = v;
        }
        h->rows++;
    }
    if (status == DS_OK && ferror(f))
        status = ds_error(DS_ERR_INPUT, "plot: %s: read error: %s", path, strerror(errno));
    if (status == DS_OK && h->rows == 0)
        status = ds_error(DS_ERR_INPUT,
                          "plot: %s: %s", path,
                          lineno == 0 ? "empty: no header and no version"
                                      : "no version in it yet (no night has been published)");
    free(line);
    free(field);
    fclose(f);
    if (status != DS_OK) history_free(h);
    return status;
}

static int plot_history(const char *state_dir, const char *output)
{
    char path[2048];
    snprintf(path, sizeof(path), "%s/history-matrix.tsv", state_dir);
    HistoryMatrix h;
    DS_TRY(read_history(path, &h));
    FILE *g = NULL;
    int status = gnuplot_open(&g);
    if (status != DS_OK) {
        history_free(&h);
        return status;
    }
    /* one row per version: the version, then each set's loss (NaN: not evaluated) */
    fprintf(g, "$h << EOD\n");
    for (int r = 0; r < h.rows; r++) {
        fprintf(g, "%ld", h.versions[r]);
        for (int c = 0; c < h.cols; c++)
            fprintf(g, " %.9g", h.loss[(size_t)r * h.cols + c]);
        fprintf(g, "\n");
    }
    fprintf(g, "EOD\n$cells << EOD\n"); /* the heatmap: set index, row index, loss */
    int evaluated = 0;
    for (int r = 0; r < h.rows; r++)
        for (int c = 0; c < h.cols; c++) {
            const double v = h.loss[(size_t)r * h.cols + c];
            if (isnan(v)) continue;
            fprintf(g, "%d %d %.9g\n", c, r, v);
            evaluated++;
        }
    fprintf(g, "EOD\n");
    /* the ranges set here, so that one version or one value draws without gnuplot's warnings */
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < (size_t)h.rows * h.cols; i++)
        if (!isnan(h.loss[i])) lo = fmin(lo, h.loss[i]), hi = fmax(hi, h.loss[i]);
    if (!(lo <= hi)) lo = 0, hi = 1; /* nothing evaluated: an empty frame */
    const double pad = hi > lo ? 0.05 * (hi - lo) : fabs(hi) > 0 ? 0.05 * fabs(hi) : 0.1;
    long vmin = h.versions[0], vmax = h.versions[0];
    for (int r = 1; r < h.rows; r++)
        vmin = h.versions[r] < vmin ? h.versions[r] : vmin,
        vmax = h.versions[r] > vmax ? h.versions[r] : vmax;
    fprintf(g, "set terminal pngcairo size 1200,1000 font 'sans,10'\nset output ");
    put_quoted(g, output);
    fprintf(g, "\nset multiplot layout 2,1 title ");
    put_quoted(g, state_dir);
    /* top: one line per held-out set over the versions */
    fprintf(g, "\nset grid\nset xlabel 'published version'\n"
               "set ylabel 'held-out loss (1 - accuracy for a classifier)'\n"
               "set datafile missing 'NaN'\nset xtics 1\nset xrange [%.1f:%.1f]\n"
               "set yrange [%.9g:%.9g]\n",
            vmin - 0.3, vmax + 0.3, lo - pad, hi + pad);
    if (h.rows > 40) fprintf(g, "set xtics autofreq\n");
    fprintf(g, h.cols <= 16 ? "set key outside right top\n" : "set key off\n");
    fprintf(g, "plot");
    for (int c = 0; c < h.cols; c++) {
        fprintf(g, "%s $h using 1:%d with linespoints pt 7 ps 0.8 title ", c ? "," : "", c + 2);
        put_quoted(g, h.sets[c]);
    }
    /* bottom: the matrix, versions down, sets across */
    fprintf(g, "\nunset grid\nunset key\nset xlabel 'held-out set'\nset ylabel 'published "
               "version'\nset cblabel 'held-out loss'\nset cbrange [%.9g:%.9g]\n"
               "set yrange [%d.5:-0.5]\nset xrange [-0.5:%d.5]\nset palette defined (0 '#2166ac', 0.5 '#f7f7f7', 1 "
               "'#b2182b')\nset xtics rotate by -45 (",
            hi > lo ? lo : lo - pad, hi > lo ? hi : hi + pad, h.rows - 1, h.cols - 1);
    const int xstep = h.cols > 40 ? (h.cols + 39) / 40 : 1;
    for (int c = 0, first = 1; c < h.cols; c += xstep, first = 0) {
        fprintf(g, "%s", first ? "" : ", ");
        put_quoted(g, h.sets[c]);
        fprintf(g, " %d", c);
    }
    fprintf(g, ")\nset ytics (");
    const int ystep = h.rows > 40 ? (h.rows + 39) / 40 : 1;
    for (int r = 0, first = 1; r < h.rows; r += ystep, first = 0)
        fprintf(g, "%s'%ld' %d", first ? "" : ", ", h.versions[r], r);
    fprintf(g, ")\nplot $cells using 1:2:(0.5):(0.5):3 with boxxyerror fs solid 1.0 noborder "
               "fc palette%s\nunset multiplot\n",
            h.rows * h.cols <= 400
                ? ", $cells using 1:2:(sprintf('%.3g', $3)) with labels font 'sans,8'"
                : "");
    if ((status = gnuplot_close(g, output)) == DS_OK)
        printf("dstrain: plot of the history of %d published version%s on %d held-out set%s (%d "
               "losses) written to %s\n",
               h.rows, h.rows == 1 ? "" : "s", h.cols, h.cols == 1 ? "" : "s", evaluated, output);
    history_free(&h);
    return status;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int plot_main(int argc, char **argv)
{
    const char *dir = NULL, *output = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: dstrain plot DIR [-o FILE.png]\n"
                   "  DIR a run directory: loss (and eval loss), learning rate and tokens/s over\n"
                   "  steps from DIR/metrics.jsonl; default output DIR/plot.png\n"
                   "  DIR a nightly state directory (slurm/nightly.sh): every published\n"
                   "  version's held-out loss on every night's held-out set, from\n"
                   "  DIR/history-matrix.tsv, as lines and a heatmap; default DIR/history.png\n"
                   "  (needs gnuplot)\n");
            return DS_OK;
        }
        if (strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) {
            if (i + 1 >= argc)
                return ds_error(DS_ERR_INPUT, "plot: %s expects a file name", argv[i]);
            output = argv[++i];
        } else if (!dir) {
            dir = argv[i];
        } else {
            return ds_error(DS_ERR_INPUT, "plot: unexpected argument \"%s\"", argv[i]);
        }
    }
    if (!dir) return ds_error(DS_ERR_INPUT, "plot: expected DIR (see dstrain plot --help)");
    const char *pasted[2] = {dir, output};
    for (int i = 0; i < 2; i++) {
        char shown[600];
        if (pasted[i] && ds_has_control_chars(pasted[i]))
            return ds_error(DS_ERR_INPUT, "plot: \"%s\": a path with a control character",
                            ds_printable(shown, sizeof(shown), pasted[i], 200));
    }
    /* a nightly state directory has nights/ (and, once a night is published, the matrix) and
     * no metrics.jsonl; anything else is read as a run directory */
    char probe[2048], out_buf[2048];
    snprintf(probe, sizeof(probe), "%s/metrics.jsonl", dir);
    struct stat st;
    int history = 0;
    if (stat(probe, &st) != 0) {
        snprintf(probe, sizeof(probe), "%s/history-matrix.tsv", dir);
        history = stat(probe, &st) == 0;
        snprintf(probe, sizeof(probe), "%s/nights", dir);
        history = history || is_dir(probe);
    }
    if (!output) {
        snprintf(out_buf, sizeof(out_buf), "%s/%s", dir, history ? "history.png" : "plot.png");
        output = out_buf;
    }
    return history ? plot_history(dir, output) : plot_run(dir, output);
}
