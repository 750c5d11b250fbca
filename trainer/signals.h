/* signals.h: preemption requests and Ctrl-C. During setup (before the step loop) SIGUSR1,
 * SIGTERM and SIGINT end the process at once (75, or 130 for SIGINT): there is nothing to save
 * and a call may block. In the loop they set a flag; the loop polls it at step boundaries, all
 * ranks agree, a checkpoint is written and the process exits with DS_EXIT_REQUEUE. A second
 * SIGINT exits at once (130); the last complete checkpoint stays, as saves are atomic. */
#ifndef DSTRAIN_SIGNALS_H
#define DSTRAIN_SIGNALS_H

void signals_install(void);
/* From now on signals are polled by the step loop instead of ending the process. */
void signals_enter_loop(void);
/* The signal received (SIGUSR1, SIGTERM, SIGINT), or 0 when none. */
int signals_pending(void);
const char *signals_name(int sig);

#endif
