/* log.h: what any module prints for a person: warnings that stand out, message lines that are
 * never glued to a live progress bar, and progress of long preparations (loading weights,
 * packing, Fisher passes, export). Part of the base layer (see param_table.h); the step line and
 * the metrics are progress.h's, which implements these too. */
#ifndef DSTRAIN_LOG_H
#define DSTRAIN_LOG_H

#include <stdio.h>

/* A warning that stands out: ends a live bar's line first, then "dstrain: warning: ..." on
 * stderr as one whole line (one write). Printed on every rank that calls it; counted
 * (progress_warnings()). */
void progress_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int progress_warnings(void);
/* An ordinary message line ("dstrain: ...") on the step line's stream, never glued to a live
 * bar: the bar's line is ended first and the message is written whole (one write). Any thread.
 * (On a terminal, other output to stdout or stderr also erases the live line first and the
 * line is drawn again after it: printf needs no special care.) */
void progress_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* ---- long preparations ----------------------------------------------------------------------- */

/* A task with a known total (bytes, tensors, documents...): a bar on a terminal, otherwise a
 * line at most every 10% or 10 s, and a final "done in" line. total <= 0: unknown total. */
typedef struct ProgressTask {
    char what[96];
    const char *unit;
    double total, done;
    double t_start, t_last_print;
    int last_decile;
    int interactive;
    FILE *out;
} ProgressTask;

void progress_task_begin(ProgressTask *t, const char *what, double total, const char *unit);
void progress_task_update(ProgressTask *t, double done);
void progress_task_end(ProgressTask *t);

#endif
