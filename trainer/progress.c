/* progress.c: the run's progress line, warnings, non-finite guard and metrics snapshot.
 * Everything is process-wide and sized at compile time: the step loop's calls allocate nothing,
 * and format text only on the steps that print. Setters other modules call (checkpoint state,
 * EWC, replay) may come from another thread: they take the one mutex. */
#include "progress.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
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
    int line_open; /* a live bar is on screen without its newline */
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
    return isatty(fileno(out));
}

void progress_begin(const ProgressOptions *opt)
{
    pthread_mutex_lock(&lock);
    memset(&P, 0, sizeof(P));
    P.opt = *opt;
    if (P.opt.log_every < 1) P.opt.log_every = 1;
    FILE *out = out_stream();
    P.interactive = opt->interactive < 0 ? wants_bar(out) : opt->interactive;
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
    progress_warn("step %d: %s is not finite (loss %g, grad norm %g): step skipped, no update "
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
            progress_warn("step %d: loss spike: %.4f is %.1fx its running mean %.4f", s->step,
                          s->loss, s->loss / P.loss_ema, P.loss_ema);
        }
        P.loss_ema = P.loss_ema_count == 0
                         ? s->loss
                         : (1 - LOSS_EMA_ALPHA) * P.loss_ema + LOSS_EMA_ALPHA * s->loss;
        P.loss_ema_count++;
    }

    if (P.step_sleep_ms > 0) /* after publishing: a scrape sees this step while it sleeps */
        nanosleep(&(struct timespec){P.step_sleep_ms / 1000, P.step_sleep_ms % 1000 * 1000000L},
                  NULL);

    const int last = s->step >= P.opt.total_steps;
    const int first = P.steps_seen == 1;
    if (!(s->step % P.opt.log_every == 0 || first || last || !isnan(s->eval_loss))) return;

    const double share = P.window_seconds > 0 ? P.window_wait / P.window_seconds : 0.0;
    /* the first step opens files and warms caches: not a sign of a slow reader */
    if (!first && share > DATA_WAIT_WARN_SHARE && !P.data_slow) {
        P.data_slow = 1;
        progress_warn("step %d: the data reader is falling behind: the step loop waited for "
                      "data %.0f%% of the time since the last report",
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
        fprintf(out, "\r[%s] %s\x1b[K%s", bar, line, keep ? "\n" : "");
        P.line_open = !keep;
    } else {
        fprintf(out, "%s\n", line);
    }
    fflush(out);
}

void progress_end(void)
{
    if (P.line_open) {
        fputc('\n', out_stream());
        fflush(out_stream());
        P.line_open = 0;
    }
}

void progress_warn(const char *fmt, ...)
{
    progress_end();
    fflush(out_stream());
    va_list ap;
    va_start(ap, fmt);
    fputs(P.interactive && isatty(STDERR_FILENO) ? "\x1b[1;33mdstrain: warning:\x1b[0m "
                                                 : "dstrain: warning: ",
          stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    P.warnings++;
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
    vfprintf(out_stream(), fmt, ap);
    va_end(ap);
    fputc('\n', out_stream());
    fflush(out_stream());
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
        progress_warn("checkpoint of step %d stalled training for %.1fs (%.0f mean steps)", step,
                      stall_seconds, mean_step > 0 ? stall_seconds / mean_step : 0.0);
}

static void set_gauge(double *field, double v)
{
    pthread_mutex_lock(&lock);
    *field = v;
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
