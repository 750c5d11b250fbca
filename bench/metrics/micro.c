/* micro.c: what serving metrics costs, measured directly rather than through noisy tokens/s:
 * the step loop's side (progress_step on a step that prints nothing: snapshot update and one
 * metrics_publish memcpy under the mutex), the formatter, and the server's CPU time per scrape
 * over loopback (process CPU time / scrapes while a client scrapes as fast as it can).
 * Built and run by bench/metrics/run.sh (cc with the three sources it needs). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/metrics_server.h"
#include "trainer/progress.h"

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

int main(void)
{
    FILE *null = fopen("/dev/null", "w");
    const int steps = 2000000;
    progress_begin(&(ProgressOptions){
        .out = null, .interactive = 0, .total_steps = steps * 2, .log_every = 1000000000});
    ProgressStep s = {.loss = 2.0,
                      .lr = 1e-3,
                      .grad_norm = 1,
                      .tokens = 256,
                      .seconds = 0.1,
                      .data_wait = 0.001,
                      .eval_loss = __builtin_nan("")};
    s.step = 2; /* step 1 prints */
    double t0 = ds_now();
    for (int i = 0; i < steps; i++) {
        s.step = 2 + i;
        progress_step(&s);
    }
    const double per_step = (ds_now() - t0) / steps;

    MetricsSnapshot snap;
    progress_snapshot(&snap);
    static char buf[16384];
    const int formats = 200000;
    t0 = ds_now();
    size_t n = 0;
    for (int i = 0; i < formats; i++)
        n += metrics_format(&snap, buf, sizeof(buf));
    const double per_format = (ds_now() - t0) / formats;

    MetricsServer *srv;
    int port;
    if (metrics_server_start("127.0.0.1:0", 0, &srv, &port) != DS_OK) {
        fprintf(stderr, "%s\n", ds_last_error());
        return 1;
    }
    const int scrapes = 5000;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    double c0 = cpu_seconds();
    t0 = ds_now();
    size_t bytes = 0;
    for (int i = 0; i < scrapes; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) return 1;
        if (write(fd, req, strlen(req)) < 0) return 1;
        for (ssize_t r; (r = read(fd, buf, sizeof(buf))) > 0;)
            bytes += (size_t)r;
        close(fd);
    }
    const double wall = ds_now() - t0, cpu = cpu_seconds() - c0;
    metrics_server_stop(srv);
    printf("progress_step (no line printed, publish included): %.0f ns per step\n", 1e9 * per_step);
    printf("metrics_format: %.2f us per scrape (%zu bytes)\n", 1e6 * per_format, n / formats);
    printf("loopback scrape: %.0f us wall, %.0f us CPU (client and server together) per scrape, "
           "%zu bytes each\n",
           1e6 * wall / scrapes, 1e6 * cpu / scrapes, bytes / scrapes);
    printf("at 10 scrapes/s: at most %.3f%% of one core\n", 100.0 * 10 * cpu / scrapes);
    fclose(null);
    return 0;
}
