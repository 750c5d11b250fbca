/* signals.h: preemption requests. SIGUSR1 (Slurm's warning before a time limit or preemption)
 * and SIGTERM set a flag; the step loop polls it at step boundaries, all ranks agree, a
 * checkpoint is written and the process exits with DS_EXIT_REQUEUE. A second signal during the
 * save only sets the flag again: the save in progress finishes and is committed atomically. */
#ifndef DSTRAIN_SIGNALS_H
#define DSTRAIN_SIGNALS_H

void signals_install(void);
/* The signal received (SIGUSR1, SIGTERM), or 0 when none. */
int signals_pending(void);
const char *signals_name(int sig);

#endif
