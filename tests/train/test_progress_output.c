/* test_progress_output.c: what the progress module writes, as a terminal or a launcher sees it.
 * Warnings and notes are whole lines (one write each: mpirun forwards writes, and a line written
 * in pieces gets another stream's line spliced into it); the run's own warnings come from the
 * rank that prints the step line, judged on the figures that line shows; on a terminal, other
 * output (a printf from any module, stderr) erases the live bar instead of being glued to its
 * end, and the bar is drawn again after it. */
#define _GNU_SOURCE /* fopencookie */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/progress.h"

/* ---- a stream that records each write it receives ------------------------------------------- */

#define MAX_WRITES 64
static struct {
    int count;
    char text[MAX_WRITES][1024];
} W;

static ssize_t record_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie;
    if (W.count < MAX_WRITES) snprintf(W.text[W.count++], sizeof(W.text[0]), "%.*s", (int)n, buf);
    return (ssize_t)n;
}

/* stderr replaced by an unbuffered recording stream, as stderr is unbuffered. */
static void record_stderr(void)
{
    memset(&W, 0, sizeof(W));
    FILE *f = fopencookie(NULL, "w", (cookie_io_functions_t){.write = record_write});
    cr_assert_not_null(f);
    setvbuf(f, NULL, _IONBF, 0);
    stderr = f;
}

static ProgressStep step(int i, double loss, double wait)
{
    return (ProgressStep){.step = i,
                          .loss = loss,
                          .lr = 1e-3,
                          .grad_norm = 1,
                          .tokens = 10,
                          .seconds = 1.0,
                          .data_wait = wait,
                          .eval_loss = NAN};
}

static FILE *begin_plain(int rank, char **text, size_t *len)
{
    FILE *f = open_memstream(text, len);
    progress_begin(&(ProgressOptions){
        .out = f, .interactive = 0, .total_steps = 100, .log_every = 5, .rank = rank});
    return f;
}

/* ---- whole lines ------------------------------------------------------------------------------
 */

Test(progress_output, a_warning_is_one_write)
{
    record_stderr();
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_plain(0, &text, &len);
    progress_warn("checkpoint %d: %s", 7, "something to say");
    cr_assert_eq(W.count, 1, "%d writes: \"%s\" \"%s\" ...", W.count, W.text[0], W.text[1]);
    cr_assert_str_eq(W.text[0], "dstrain: warning: checkpoint 7: something to say\n");
    fclose(f);
    free(text);
}

Test(progress_output, a_note_is_one_write)
{
    memset(&W, 0, sizeof(W));
    FILE *f = fopencookie(NULL, "w", (cookie_io_functions_t){.write = record_write});
    setvbuf(f, NULL, _IONBF, 0); /* every piece would show as its own write */
    progress_begin(&(ProgressOptions){.out = f, .interactive = 0, .total_steps = 10});
    progress_note("dstrain: task %d/%d: %s", 1, 3, "first");
    cr_assert_eq(W.count, 1, "%d writes", W.count);
    cr_assert_str_eq(W.text[0], "dstrain: task 1/3: first\n");
    fclose(f);
}

/* ---- the run's warnings: the printing rank's, on the line's figures ---------------------------
 */

/* 20 steps, log every 5: a loss spike at 15 and half of every step after 10 spent waiting. */
static void spike_and_slow_reader(void)
{
    for (int i = 1; i <= 20; i++) {
        const ProgressStep s = step(i, i == 15 ? 9.0 : 2.0, i > 10 ? 0.5 : 0.0);
        progress_step(&s);
    }
}

Test(progress_output, rank_zero_prints_the_run_warnings_with_the_lines_share)
{
    record_stderr();
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_plain(0, &text, &len);
    spike_and_slow_reader();
    fflush(f);
    cr_assert_eq(progress_warnings(), 2);
    cr_assert_eq(W.count, 2, "%d writes", W.count);
    const char *reader = strstr(W.text[0], "falling behind") ? W.text[0] : W.text[1];
    cr_assert(strstr(reader, "waited for data 50.0% of the time"), "%s", reader);
    /* the line printed at that report shows the same share */
    cr_assert(strstr(text, "step  15/100 | loss 9.0000") && strstr(text, "data wait 50.0%"), "%s",
              text);
    fclose(f);
    free(text);
}

Test(progress_output, other_ranks_count_but_do_not_print_the_run_warnings)
{
    record_stderr();
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_plain(3, &text, &len);
    spike_and_slow_reader();
    double loss = NAN, gn = 1.0;
    cr_assert_eq(progress_check_finite(21, &loss, &gn), 0);
    progress_checkpoint_done(21, 9.0, 6.0, 1); /* 6 mean steps of stall */
    cr_assert_eq(progress_warnings(), 4);
    cr_assert_eq(W.count, 0, "rank 3 wrote: %s", W.text[0]);
    /* a warning a module raises itself is still printed where it is raised */
    progress_warn("rank-specific trouble");
    cr_assert_eq(W.count, 1);
    fclose(f);
    free(text);
}

Test(progress_output, a_launchers_rank_counts_too)
{
    record_stderr();
    setenv("OMPI_COMM_WORLD_RANK", "2", 1);
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_plain(0, &text, &len);
    unsetenv("OMPI_COMM_WORLD_RANK");
    spike_and_slow_reader();
    cr_assert_eq(progress_warnings(), 2);
    cr_assert_eq(W.count, 0, "launcher rank 2 wrote: %s", W.text[0]);
    fclose(f);
    free(text);
}

static void draw(int i)
{
    const ProgressStep s = step(i, 2.0, 0.0);
    progress_step(&s);
}

/* ---- the live bar and everybody else's output --------------------------------------------------
 */

/* The screen a terminal shows for these bytes: "\r" goes to column 0, ESC[K erases to the end
 * of the line, other escape sequences (colours) draw nothing, "\n" ends the line. */
static int render(const char *bytes, size_t n, char lines[][512], int max_lines)
{
    int count = 0;
    size_t col = 0, end = 0;
    char cur[512] = "";
    for (size_t i = 0; i < n; i++) {
        const char c = bytes[i];
        if (c == '\r') {
            col = 0;
        } else if (c == '\n') {
            cur[end] = 0;
            if (count < max_lines) snprintf(lines[count++], 512, "%s", cur);
            col = end = 0;
        } else if (c == '\x1b' && i + 1 < n && bytes[i + 1] == '[') {
            size_t j = i + 2;
            while (j < n && !(bytes[j] >= '@' && bytes[j] <= '~'))
                j++;
            if (j < n && bytes[j] == 'K') end = col;
            i = j;
        } else if (col < sizeof(cur) - 1) {
            cur[col++] = c;
            if (col > end) end = col;
        }
    }
    cur[end] = 0;
    if (end > 0 && count < max_lines) snprintf(lines[count++], 512, "%s", cur);
    return count;
}

Test(progress_output, other_output_is_never_glued_to_the_live_bar)
{
    /* stdout and stderr on one file, as both are on one terminal; the bar forced on */
    char path[] = "/tmp/dstrain_progress_screen_XXXXXX";
    const int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    unlink(path);
    fflush(stdout);
    fflush(stderr);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    setenv("DSTRAIN_PROGRESS", "bar", 1);
    progress_begin(
        &(ProgressOptions){.out = stdout, .interactive = -1, .total_steps = 4, .log_every = 1});
    draw(1);
    draw(2);
    /* a module's own printf (the checkpoint writer's message), then a library's stderr line */
    printf("dstrain: checkpoint run/checkpoints/step-00000002 saved\n");
    fflush(stdout);
    fprintf(stderr, "some library: a message\n");
    progress_note("dstrain: a note");
    draw(3);
    draw(4);
    progress_end();
    fflush(stdout);
    fflush(stderr);

    static char bytes[1 << 16];
    const ssize_t n = pread(fd, bytes, sizeof(bytes), 0);
    cr_assert_gt(n, 0);
    static char lines[64][512];
    const int count = render(bytes, (size_t)n, lines, 64);
    int checkpoint = -1, library = -1, note = -1, last_bar = -1;
    for (int i = 0; i < count; i++) {
        if (strcmp(lines[i], "dstrain: checkpoint run/checkpoints/step-00000002 saved") == 0)
            checkpoint = i;
        if (strcmp(lines[i], "some library: a message") == 0) library = i;
        if (strcmp(lines[i], "dstrain: a note") == 0) note = i;
        if (strncmp(lines[i], "[####################] step 4/4 |", 33) == 0) last_bar = i;
        cr_assert(!strstr(lines[i], "eta") || strncmp(lines[i], "[", 1) == 0,
                  "line %d is glued to the bar: \"%s\"", i, lines[i]);
    }
    cr_assert_geq(checkpoint, 0, "the checkpoint message is not a line of its own (%d lines)",
                  count);
    cr_assert_gt(library, checkpoint);
    cr_assert_gt(note, library);
    cr_assert_eq(last_bar, count - 1, "the final bar is the last line");
    /* the bar was drawn again after the messages: step 2's bar, ended by the note */
    cr_assert(strncmp(lines[library + 1], "[##########..........] step 2/4 |", 33) == 0,
              "after the messages: \"%s\"", lines[library + 1]);
    cr_assert_eq(note, library + 2);
}
