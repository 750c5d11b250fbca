/* progress.c: the run's progress line, warnings, non-finite guard and metrics snapshot.
 * Everything is process-wide and sized at compile time: the step loop's calls allocate nothing,
 * and format text only on the steps that print. Setters other modules call (checkpoint state,
 * EWC, replay) may come from another thread: they take the one mutex.
 * Output is written in whole lines (one write each), so that a launcher merging stdout and
 * stderr never splices one line into another. On a terminal, the live line (the step bar or a
 * long preparation's line) is owned by the screen below: stdout and stderr then pass through it,
 * so whatever any module prints first erases the live line and the line is drawn again after
 * it, instead of being glued to its end. */
#define _GNU_SOURCE /* fopencookie */
#include "progress.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define LOSS_SPIKE_FACTOR 3.0 /* warn when loss > factor x its running mean */
#define LOSS_EMA_ALPHA 0.1
#define LOSS_EMA_WARMUP 10 /* finite steps before spikes are judged */
#define DATA_WAIT_WARN_SHARE 0.10
#define BAR_WIDTH 20

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* ckpt_state and snap's setters */

static struct {
    ProgressOptions opt;
    int interactive;
    int printing;  /* this rank prints the step line and the run's warnings (rank 0) */
    int screen;    /* the live bar is drawn through the screen (stdout on a terminal) */
    int line_open; /* a live bar is on screen without its newline (not through the screen) */
    double t_start;
    int steps_seen;
    double loss_ema;
    int loss_ema_count, last_spike_step;
    int nonfinite_in_row;
    long long nonfinite_total;
    int inject_from, inject_count;
    long step_sleep_ms; /* DSTRAIN_STEP_SLEEP_MS: a test hook that makes runs last */
    double window_seconds, window_wait; /* since the last printed line */
    int data_slow; /* warned that the reader is behind; re-armed under half the share */
    int warnings;
    char ckpt_state[64];
    char task[160]; /* "task 2/3 b" in a task sequence, else "" */
    MetricsSnapshot snap;
} P = {.opt = {.log_every = 1}};

static FILE *out_stream(void)
{
    return P.opt.out ? P.opt.out : stdout;
}

/* ---- the screen: one live line and everybody else's output ------------------------------- */

/* While a live line is open on the terminal, stdout and stderr are streams of our own
 * (fopencookie) in front of the original descriptors: a write that is not the live line's first
 * erases it ("\r", erase to end of line), and once that output has ended its line, the live
 * line is drawn again. Installed once, on the first live line, for the rest of the process.
 * Lock order: a stream's own lock, then S.lock; the live line is written with write(2) under
 * S.lock alone, never through a FILE, so the two never wait on each other. */
static struct {
    pthread_mutex_t lock;
    int installed;
    int fd;         /* the terminal the live line is on (stdout's descriptor) */
    int open;       /* the live line is on screen, without its newline */
    int hidden;     /* erased for other output; drawn again after that output's newline */
    char live[768]; /* the live line as last drawn, "\r" and erase-to-end included */
    size_t live_len;
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .fd = STDOUT_FILENO};

static void write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* a closed terminal: nothing to report to */
        buf += w;
        n -= (size_t)w;
    }
}

static ssize_t screen_stream_write(void *cookie, const char *buf, size_t n)
{
    const int fd = (int)(intptr_t)cookie;
    pthread_mutex_lock(&S.lock);
    if (S.open) {
        write_all(S.fd, "\r\x1b[K", 4);
        S.open = 0;
        S.hidden = 1;
    }
    write_all(fd, buf, n);
    if (S.hidden && n > 0 && buf[n - 1] == '\n') {
        write_all(S.fd, S.live, S.live_len);
        S.open = 1;
        S.hidden = 0;
    }
    pthread_mutex_unlock(&S.lock);
    return (ssize_t)n;
}

/* stdout and stderr through screen_stream_write; 1 when the screen owns them. */
static int screen_install(void)
{
    if (S.installed) return 1;
    fflush(stdout);
    fflush(stderr);
    const cookie_io_functions_t io = {.write = screen_stream_write};
    FILE *out = fopencookie((void *)(intptr_t)fileno(stdout), "w", io);
    FILE *err = fopencookie((void *)(intptr_t)fileno(stderr), "w", io);
    if (!out || !err) {
        if (out) fclose(out);
        if (err) fclose(err);
        return 0;
    }
    setvbuf(out, NULL, _IOLBF, 0);
    setvbuf(err, NULL, _IONBF, 0);
    S.fd = fileno(stdout);
    stdout = out;
    stderr = err;
    S.installed = 1;
    return 1;
}

/* Draw the live line (text without "\r"); final: end it with a newline, it stays. */
static void screen_live(const char *text, int final)
{
    pthread_mutex_lock(&S.lock);
    const int n = snprintf(S.live, sizeof(S.live), "\r%s\x1b[K", text);
    S.live_len = n < 0 ? 0 : (size_t)n < sizeof(S.live) ? (size_t)n : sizeof(S.live) - 1;
    write_all(S.fd, S.live, S.live_len);
    if (final) write_all(S.fd, "\n", 1);
    S.open = !final;
    S.hidden = 0;
    pthread_mutex_unlock(&S.lock);
}

/* End the live line where it is (a newline), if one is open. */
static void screen_end_live(void)
{
    pthread_mutex_lock(&S.lock);
    if (S.open) write_all(S.fd, "\n", 1);
    S.open = S.hidden = 0;
    pthread_mutex_unlock(&S.lock);
}

/* The world rank a launcher gave this process (0 without one). */
static int launcher_rank(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

/* A live bar only on a terminal, and not under a launcher: mpirun hands its ranks a pty even
 * when its own output goes to a file. DSTRAIN_PROGRESS=bar|plain decides instead. */
static int wants_bar(FILE *out)
{
    const char *force = getenv("DSTRAIN_PROGRESS");
    if (force && strcmp(force, "bar") == 0) return 1;
    if (force && strcmp(force, "plain") == 0) return 0;
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_RANK") || getenv("PMIX_RANK") ||
        getenv("SLURM_PROCID"))
        return 0;
    if (out == stdout && S.installed) return isatty(S.fd);
    return isatty(fileno(out));
}

/* The run's own warnings (loss spikes, a slow reader, non-finite steps, checkpoint stalls) are
 * judged on the figures the step line shows, so only the rank that prints that line prints
 * them; every rank counts them. */
static void run_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void progress_begin(const ProgressOptions *opt)
{
    pthread_mutex_lock(&lock);
    memset(&P, 0, sizeof(P));
    P.opt = *opt;
    if (P.opt.log_every < 1) P.opt.log_every = 1;
    P.printing = opt->rank == 0 && launcher_rank() == 0;
    FILE *out = out_stream();
    P.interactive = opt->interactive < 0 ? wants_bar(out) : opt->interactive;
    /* the bar goes through the screen when it is on the process's stdout */
    P.screen = P.interactive && (!opt->out || opt->out == stdout) && screen_install();
    P.t_start = ds_now();
    metrics_snapshot_init(&P.snap);
    P.snap.step = opt->start_step;
    P.snap.total_steps = opt->total_steps;
    snprintf(P.ckpt_state, sizeof(P.ckpt_state), "-");
    const char *inject = getenv("DSTRAIN_INJECT_NAN_STEP");
    if (inject && *inject) {
        char *end;
        P.inject_from = (int)strtol(inject, &end, 10);
        P.inject_count = *end == ':' ? (int)strtol(end + 1, NULL, 10) : 1;
    }
    const char *sleep_ms = getenv("DSTRAIN_STEP_SLEEP_MS");
    P.step_sleep_ms = sleep_ms ? strtol(sleep_ms, NULL, 10) : 0;
    pthread_mutex_unlock(&lock);
    metrics_publish(&P.snap);
}

int progress_check_finite(int step, double *loss, double *grad_norm)
{
    if (P.inject_count > 0 && step >= P.inject_from && step < P.inject_from + P.inject_count) {
        *loss = NAN;
        *grad_norm = NAN;
    }
    if (isfinite(*loss) && isfinite(*grad_norm)) {
        P.nonfinite_in_row = 0;
        return 1;
    }
    P.nonfinite_in_row++;
    P.nonfinite_total++;
    run_warn("step %d: %s is not finite (loss %g, grad norm %g): step skipped, no update "
             "(%d in a row, %lld in this run)",
             step, isfinite(*loss) ? "the gradient" : "the loss", *loss, *grad_norm,
             P.nonfinite_in_row, P.nonfinite_total);
    return 0;
}

int progress_nonfinite_in_row(void)
{
    return P.nonfinite_in_row;
}
long long progress_nonfinite_total(void)
{
    return P.nonfinite_total;
}

static void format_duration(double s, char *buf, size_t cap)
{
    if (!isfinite(s) || s < 0) {
        snprintf(buf, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, cap, "%lds", t);
}

/* The fields of one line; data-wait share and ETA come from the run's state. */
static void format_line(const ProgressStep *s, double wait_share, double eta, char *buf, size_t cap)
{
    char eta_text[32], ckpt[64];
    format_duration(eta, eta_text, sizeof(eta_text));
    pthread_mutex_lock(&lock);
    snprintf(ckpt, sizeof(ckpt), "%s", P.ckpt_state);
    double mfu = P.snap.mfu_ratio;
    pthread_mutex_unlock(&lock);
    const int digits = snprintf(NULL, 0, "%d", P.opt.total_steps);
    size_t n = 0;
#define ADD(...)                                                                                   \
    n += (size_t)snprintf(buf + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__)
    ADD("step %*d/%d | ", digits, s->step, P.opt.total_steps);
    if (P.task[0]) ADD("%s | ", P.task);
    if (s->skipped)
        ADD("loss %-6s (skipped) | ", "nan");
    else
        ADD("loss %.4f | ", s->loss);
    ADD("lr %.3e | grad norm %.3f | %.0f tok/s | ", s->lr, s->grad_norm,
        s->seconds > 0 ? s->tokens / s->seconds : 0.0);
    if (!isnan(mfu)) ADD("mfu %.1f%% | ", 100.0 * mfu);
    ADD("data wait %.1f%% | ckpt %s | eta %s", 100.0 * wait_share, ckpt, eta_text);
    if (!isnan(s->eval_loss)) ADD(" | eval loss %.4f", s->eval_loss);
    if (P.nonfinite_total > 0) ADD(" | non-finite %lld", P.nonfinite_total);
#undef ADD
}

void progress_format_line(const ProgressStep *s, char *buf, size_t cap)
{
    format_line(s, s->seconds > 0 ? s->data_wait / s->seconds : 0.0, NAN, buf, cap);
}

void progress_step(const ProgressStep *s)
{
    P.steps_seen++;
    P.window_seconds += s->seconds;
    P.window_wait += s->data_wait;

    pthread_mutex_lock(&lock);
    MetricsSnapshot *m = &P.snap;
    m->step = s->step;
    m->tokens_total += s->skipped ? 0.0 : s->tokens;
    if (!s->skipped) m->loss = s->loss;
    m->learning_rate = s->lr;
    m->grad_norm = s->grad_norm;
    m->tokens_per_second = s->seconds > 0 ? s->tokens / s->seconds : 0.0;
    if (P.opt.peak_flops > 0 && P.opt.flops_per_token > 0)
        m->mfu_ratio = m->tokens_per_second * P.opt.flops_per_token / P.opt.peak_flops;
    metrics_snapshot_observe_step(m, s->seconds);
    m->data_wait_seconds_total += s->data_wait;
    m->nonfinite_steps_total = (uint64_t)P.nonfinite_total;
    metrics_publish(m);
    pthread_mutex_unlock(&lock);

    /* loss spike against the running mean of the steps before it */
    if (!s->skipped) {
        if (P.loss_ema_count >= LOSS_EMA_WARMUP && s->loss > LOSS_SPIKE_FACTOR * P.loss_ema &&
            s->step - P.last_spike_step >= 10) {
            P.last_spike_step = s->step;
            run_warn("step %d: loss spike: %.4f is %.1fx its running mean %.4f", s->step, s->loss,
                     s->loss / P.loss_ema, P.loss_ema);
        }
        P.loss_ema = P.loss_ema_count == 0
                         ? s->loss
                         : (1 - LOSS_EMA_ALPHA) * P.loss_ema + LOSS_EMA_ALPHA * s->loss;
        P.loss_ema_count++;
    }

    if (P.step_sleep_ms > 0) { /* after publishing: a scrape sees this step while it sleeps */
        struct timespec left = {P.step_sleep_ms / 1000, P.step_sleep_ms % 1000 * 1000000L};
        while (nanosleep(&left, &left) != 0 && errno == EINTR) { /* a signal: sleep the rest */
        }
    }

    const int last = s->step >= P.opt.total_steps;
    const int first = P.steps_seen == 1;
    if (!(s->step % P.opt.log_every == 0 || first || last || !isnan(s->eval_loss))) return;

    const double share = P.window_seconds > 0 ? P.window_wait / P.window_seconds : 0.0;
    /* the first step opens files and warms caches: not a sign of a slow reader. The share is
     * the one the line below shows (this rank's, or what the driver passed as data_wait). */
    if (!first && share > DATA_WAIT_WARN_SHARE && !P.data_slow) {
        P.data_slow = 1;
        run_warn("step %d: the data reader is falling behind: the step loop waited for data "
                 "%.1f%% of the time since the last report (data wait on the line below)",
                 s->step, 100.0 * share);
    } else if (share < DATA_WAIT_WARN_SHARE / 2) {
        P.data_slow = 0;
    }
    const double elapsed = ds_now() - P.t_start;
    const double eta = elapsed / P.steps_seen * (P.opt.total_steps - s->step);
    char line[512];
    format_line(s, share, eta, line, sizeof(line));
    P.window_seconds = P.window_wait = 0.0;

    FILE *out = out_stream();
    if (P.interactive) {
        const double frac = P.opt.total_steps > 0 ? (double)s->step / P.opt.total_steps : 1.0;
        const int filled = (int)(frac * BAR_WIDTH);
        char bar[BAR_WIDTH + 1];
        for (int i = 0; i < BAR_WIDTH; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[BAR_WIDTH] = 0;
        /* an evaluation line stays on screen; the bar overwrites itself */
        const int keep = last || !isnan(s->eval_loss);
        if (P.screen) {
            char text[sizeof(line) + BAR_WIDTH + 8];
            snprintf(text, sizeof(text), "[%s] %s", bar, line);
            screen_live(text, keep);
            return;
        }
        fprintf(out, "\r[%s] %s\x1b[K%s", bar, line, keep ? "\n" : "");
        P.line_open = !keep;
    } else {
        fprintf(out, "%s\n", line);
    }
    fflush(out);
}

void progress_end(void)
{
    screen_end_live();
    if (P.line_open) {
        fputc('\n', out_stream());
        fflush(out_stream());
        P.line_open = 0;
    }
}

/* "prefix" + the formatted text + "\n" as one write on out: a launcher that merges streams,
 * or another thread, cannot cut into it. Long texts are cut at the buffer's end. */
static void write_line(FILE *out, const char *prefix, const char *fmt, va_list ap)
{
    char text[2048];
    int n = snprintf(text, sizeof(text), "%s", prefix);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof(text) - 1) {
        int m = vsnprintf(text + n, sizeof(text) - 1 - (size_t)n, fmt, ap);
        n += m < 0 ? 0 : m;
    }
    if ((size_t)n > sizeof(text) - 2) n = (int)sizeof(text) - 2;
    text[n++] = '\n';
    text[n] = 0;
    fwrite(text, 1, (size_t)n, out);
    fflush(out);
}

static void warn_line(const char *fmt, va_list ap)
{
    progress_end();
    fflush(out_stream());
    fflush(stdout); /* what was printed before the warning appears before it */
    const int colour = P.interactive && isatty(STDERR_FILENO);
    write_line(stderr, colour ? "\x1b[1;33mdstrain: warning:\x1b[0m " : "dstrain: warning: ", fmt,
               ap);
}

void progress_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    warn_line(fmt, ap);
    va_end(ap);
    P.warnings++;
}

static void run_warn(const char *fmt, ...)
{
    P.warnings++;
    if (!P.printing) return;
    va_list ap;
    va_start(ap, fmt);
    warn_line(fmt, ap);
    va_end(ap);
}

int progress_warnings(void)
{
    return P.warnings;
}

void progress_note(const char *fmt, ...)
{
    progress_end();
    va_list ap;
    va_start(ap, fmt);
    write_line(out_stream(), "", fmt, ap);
    va_end(ap);
}

/* ---- setters for other modules ----------------------------------------------------------- */

void progress_set_checkpoint_state(const char *state)
{
    pthread_mutex_lock(&lock);
    snprintf(P.ckpt_state, sizeof(P.ckpt_state), "%s", state && *state ? state : "-");
    pthread_mutex_unlock(&lock);
}

void progress_checkpoint_done(int step, double duration_seconds, double stall_seconds, int ok)
{
    pthread_mutex_lock(&lock);
    if (ok) {
        snprintf(P.ckpt_state, sizeof(P.ckpt_state), "saved %d (%.1fs)", step, duration_seconds);
        P.snap.checkpoint_duration_seconds = duration_seconds;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        P.snap.checkpoint_last_success_timestamp_seconds = ts.tv_sec + ts.tv_nsec * 1e-9;
    } else {
        snprintf(P.ckpt_state, sizeof(P.ckpt_state), "FAILED at %d", step);
    }
    const double mean_step =
        P.snap.step_count ? P.snap.step_seconds_sum / (double)P.snap.step_count : 0.0;
    metrics_publish(&P.snap);
    pthread_mutex_unlock(&lock);
    if (stall_seconds > 1.0 && stall_seconds > 5.0 * mean_step)
        run_warn("checkpoint of step %d stalled training for %.1fs (%.0f mean steps)", step,
                 stall_seconds, mean_step > 0 ? stall_seconds / mean_step : 0.0);
}

static void set_gauge(double *field, double v)
{
    pthread_mutex_lock(&lock);
    *field = v;
    pthread_mutex_unlock(&lock);
}

void progress_set_expert_load(const double *ratio, int layers)
{
    pthread_mutex_lock(&lock);
    P.snap.expert_load_layers = layers < METRICS_MAX_LAYERS ? layers : METRICS_MAX_LAYERS;
    for (int l = 0; l < P.snap.expert_load_layers; l++)
        P.snap.expert_load[l] = ratio[l];
    pthread_mutex_unlock(&lock);
}

void progress_set_ewc_penalty(double penalty)
{
    set_gauge(&P.snap.ewc_penalty, penalty);
}
void progress_set_replay_size(double examples)
{
    set_gauge(&P.snap.replay_buffer_size, examples);
}
void progress_set_replay_share(double share)
{
    set_gauge(&P.snap.replay_share, share);
}
void progress_set_task(int k, int K, const char *id)
{
    pthread_mutex_lock(&lock);
    snprintf(P.task, sizeof(P.task), "task %d/%d %.100s", k + 1, K, id);
    P.snap.task_index = k;
    P.snap.task_count = K;
    pthread_mutex_unlock(&lock);
}
void progress_restore_nonfinite(long long total)
{
    P.nonfinite_total = total;
}
void progress_set_gpu_memory(double bytes)
{
    set_gauge(&P.snap.gpu_memory_bytes, bytes);
}

void progress_snapshot(MetricsSnapshot *out)
{
    pthread_mutex_lock(&lock);
    *out = P.snap;
    pthread_mutex_unlock(&lock);
}

/* ---- long preparations ------------------------------------------------------------------- */

void progress_task_begin(ProgressTask *t, const char *what, double total, const char *unit)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->what, sizeof(t->what), "%s", what);
    t->unit = unit ? unit : "";
    t->total = total;
    t->t_start = t->t_last_print = ds_now();
    t->out = stdout;
    t->interactive = wants_bar(stdout);
    progress_end();
    if (t->interactive) screen_install(); /* its line is the screen's live line */
    if (!t->interactive) {
        fprintf(t->out, "dstrain: %s ...\n", t->what);
        fflush(t->out);
    }
}

static void task_print(ProgressTask *t, int final)
{
    const double elapsed = ds_now() - t->t_start;
    char text[256];
    if (t->total > 0) {
        const double frac = t->done / t->total;
        char eta[32];
        format_duration(frac > 0 ? elapsed / frac - elapsed : NAN, eta, sizeof(eta));
        snprintf(text, sizeof(text), "%s: %.0f/%.0f %s (%.0f%%), %s", t->what, t->done, t->total,
                 t->unit, 100.0 * frac, final ? "" : "eta ");
        if (!final) strncat(text, eta, sizeof(text) - strlen(text) - 1);
    } else if (t->done > 0) {
        snprintf(text, sizeof(text), "%s: %.0f %s", t->what, t->done, t->unit);
    } else {
        snprintf(text, sizeof(text), "%s", t->what);
    }
    if (final) {
        char took[64];
        snprintf(took, sizeof(took), "%sdone in %.1fs", t->total > 0 ? "" : ": ", elapsed);
        strncat(text, took, sizeof(text) - strlen(text) - 1);
    }
    if (t->interactive && S.installed) {
        char line[sizeof(text) + 16];
        snprintf(line, sizeof(line), "dstrain: %s", text);
        screen_live(line, final);
        return;
    }
    if (t->interactive)
        fprintf(t->out, "\rdstrain: %s\x1b[K%s", text, final ? "\n" : "");
    else
        fprintf(t->out, "dstrain: %s\n", text);
    fflush(t->out);
}

void progress_task_update(ProgressTask *t, double done)
{
    t->done = done;
    const double now = ds_now();
    if (t->interactive) {
        if (now - t->t_last_print < 0.1) return;
    } else {
        const int decile = t->total > 0 ? (int)(10.0 * done / t->total) : 0;
        if (decile <= t->last_decile && now - t->t_last_print < 10.0) return;
        t->last_decile = decile;
    }
    t->t_last_print = now;
    task_print(t, 0);
}

void progress_task_end(ProgressTask *t)
{
    if (t->total > 0) t->done = t->total;
    task_print(t, 1);
}
