/* signals.c: see signals.h. The handler stores the signal number (and, before the step loop or
 * on a second Ctrl-C, ends the process at once with async-signal-safe calls only): everything
 * else happens in the step loop, where it is safe. */
#include "signals.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static volatile sig_atomic_t pending_signal, in_loop;

static void say(const char *text)
{
    ssize_t n = write(STDERR_FILENO, text, strlen(text));
    (void)n;
}

static void on_signal(int sig)
{
    if (!in_loop) { /* setup: nothing to save, and a call may block for ever (a FIFO) */
        say(sig == SIGINT ? "\ndstrain: interrupted during setup\n"
                          : "\ndstrain: stopped by a signal during setup; nothing to save, exiting "
                            "75 to be requeued\n");
        _exit(sig == SIGINT ? 130 : DS_EXIT_REQUEUE);
    }
    if (sig == SIGINT && pending_signal == SIGINT) { /* the second Ctrl-C */
        say("\ndstrain: interrupted again: exiting now (the last complete checkpoint stays)\n");
        _exit(130);
    }
    if (sig == SIGINT && !pending_signal)
        say("\ndstrain: interrupted: saving a checkpoint at the end of this step (Ctrl-C again to "
            "exit at once)\n");
    if (!pending_signal || sig == SIGINT) pending_signal = sig;
}

void signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

void signals_enter_loop(void) { in_loop = 1; }

int signals_pending(void) { return pending_signal; }

const char *signals_name(int sig)
{
    return sig == SIGUSR1   ? "SIGUSR1"
           : sig == SIGTERM ? "SIGTERM"
           : sig == SIGINT  ? "SIGINT"
                            : "signal";
}
