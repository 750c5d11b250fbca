/* Unit tests of the operability pieces: the Prometheus formatter, the listen-address rules,
 * the progress line and non-finite guard, and the metrics server against well-behaved and
 * hostile clients (in-process, loopback, port 0). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/metrics_server.h"
#include "trainer/progress.h"

static MetricsSnapshot sample(void)
{
    MetricsSnapshot s;
    metrics_snapshot_init(&s);
    s.step = 42;
    s.total_steps = 100;
    s.tokens_total = 21504;
    s.loss = 2.5;
    s.learning_rate = 3e-4;
    s.grad_norm = 0.75;
    s.tokens_per_second = 1234.5;
    metrics_snapshot_observe_step(&s, 0.003); /* le 0.005 */
    metrics_snapshot_observe_step(&s, 0.2);   /* le 0.25 */
    metrics_snapshot_observe_step(&s, 0.2);
    metrics_snapshot_observe_step(&s, 1000); /* only +Inf */
    s.data_wait_seconds_total = 0.125;
    s.nonfinite_steps_total = 3;
    return s;
}

static char *format(const MetricsSnapshot *s)
{
    size_t n = metrics_format(s, NULL, 0);
    char *buf = malloc(n + 1);
    cr_assert_eq(metrics_format(s, buf, n + 1), n);
    return buf;
}

Test(metrics_format, values_help_and_type_lines)
{
    MetricsSnapshot s = sample();
    char *t = format(&s);
    cr_assert(strstr(t, "# HELP dstrain_loss ") != NULL, "%s", t);
    cr_assert(strstr(t, "# TYPE dstrain_loss gauge\ndstrain_loss 2.5\n") != NULL, "%s", t);
    cr_assert(strstr(t, "# TYPE dstrain_step gauge\ndstrain_step 42\n") != NULL, "%s", t);
    cr_assert(strstr(t, "# TYPE dstrain_tokens_total counter\ndstrain_tokens_total 21504\n"), "%s",
              t);
    cr_assert(strstr(t, "dstrain_learning_rate 0.00029999999999999997\n") != NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_nonfinite_steps_total 3\n") != NULL, "%s", t);
    cr_assert(strstr(t, "# TYPE dstrain_nonfinite_steps_total counter\n") != NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_data_wait_seconds_total 0.125\n") != NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_checkpoint_last_success_timestamp_seconds 0\n") != NULL, "%s", t);
    /* every sample line belongs to a metric announced by TYPE just before it */
    cr_assert_eq(t[strlen(t) - 1], '\n');
    free(t);
}

Test(metrics_format, histogram_is_cumulative)
{
    MetricsSnapshot s = sample();
    char *t = format(&s);
    cr_assert(strstr(t, "# TYPE dstrain_step_duration_seconds histogram\n") != NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_bucket{le=\"0.005\"} 1\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_bucket{le=\"0.1\"} 1\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_bucket{le=\"0.25\"} 3\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_bucket{le=\"300\"} 3\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_bucket{le=\"+Inf\"} 4\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_count 4\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_step_duration_seconds_sum 1000.403\n"), "%s", t);
    free(t);
}

Test(metrics_format, absent_values_are_left_out)
{
    MetricsSnapshot s = sample();
    char *t = format(&s); /* CPU run: no MFU, GPU memory, EWC, replay, checkpoint duration */
    cr_assert(strstr(t, "dstrain_mfu_ratio") == NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_gpu_memory_bytes") == NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_ewc_penalty") == NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_replay_buffer_size") == NULL, "%s", t);
    cr_assert(strstr(t, "dstrain_checkpoint_duration_seconds") == NULL, "%s", t);
    free(t);
    s.mfu_ratio = 0.41;
    s.gpu_memory_bytes = 8e9;
    s.ewc_penalty = 0.01;
    s.replay_buffer_size = 500;
    s.checkpoint_duration_seconds = 1.5;
    s.grad_norm = INFINITY;
    t = format(&s);
    cr_assert(strstr(t, "dstrain_mfu_ratio 0.40999999999999998\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_gpu_memory_bytes 8000000000\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_replay_buffer_size 500\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_checkpoint_duration_seconds 1.5\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_grad_norm +Inf\n"), "%s", t);
    free(t);
}

/* A mixture of experts: one labelled sample per MoE layer, none for dense layers. */
Test(metrics_format, expert_load_per_moe_layer)
{
    MetricsSnapshot s = sample();
    char *t = format(&s);
    cr_assert(strstr(t, "dstrain_expert_load_ratio") == NULL, "%s", t);
    free(t);
    s.expert_load_layers = 3;
    s.expert_load[0] = NAN; /* dense */
    s.expert_load[1] = 1.5;
    s.expert_load[2] = 4;
    t = format(&s);
    cr_assert(strstr(t, "# TYPE dstrain_expert_load_ratio gauge\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_expert_load_ratio{layer=\"1\"} 1.5\n"), "%s", t);
    cr_assert(strstr(t, "dstrain_expert_load_ratio{layer=\"2\"} 4\n"), "%s", t);
    cr_assert(strstr(t, "layer=\"0\"") == NULL, "%s", t);
    free(t);
}

Test(metrics_format, truncation_reports_needed_length)
{
    MetricsSnapshot s = sample();
    char small[64];
    size_t n = metrics_format(&s, small, sizeof(small));
    cr_assert_gt(n, sizeof(small));
    cr_assert_lt(strlen(small), sizeof(small));
}

Test(metrics_listen, loopback_only_unless_allowed)
{
    char host[64];
    int port;
    cr_assert_eq(metrics_parse_listen("127.0.0.1:9400", 0, host, sizeof(host), &port), DS_OK);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 9400);
    cr_assert_eq(metrics_parse_listen("localhost:0", 0, host, sizeof(host), &port), DS_OK);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(metrics_parse_listen("[::1]:9400", 0, host, sizeof(host), &port), DS_OK);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(metrics_parse_listen("0.0.0.0:9400", 0, host, sizeof(host), &port), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "metrics.allow_remote") != NULL, "%s", ds_last_error());
    cr_assert_eq(metrics_parse_listen("10.1.2.3:9400", 0, host, sizeof(host), &port), DS_ERR_INPUT);
    cr_assert_eq(metrics_parse_listen("0.0.0.0:9400", 1, host, sizeof(host), &port), DS_OK);
    const char *bad[] = {"9400",          ":9400",
                         "127.0.0.1:",    "127.0.0.1:70000",
                         "127.0.0.1:94x", "example.org:9400",
                         "[::1]9400",     "127.0.0.1:-1"};
    for (size_t i = 0; i < DS_ARRAY_LEN(bad); i++) {
        cr_assert_eq(metrics_parse_listen(bad[i], 1, host, sizeof(host), &port), DS_ERR_INPUT, "%s",
                     bad[i]);
        cr_assert(strstr(ds_last_error(), "metrics.listen") != NULL, "%s", ds_last_error());
    }
}

/* ---- progress -------------------------------------------------------------------------------- */

static FILE *begin_quiet(int total, int log_every, char **text, size_t *len)
{
    FILE *f = open_memstream(text, len);
    progress_begin(&(ProgressOptions){
        .out = f, .interactive = 0, .total_steps = total, .log_every = log_every});
    return f;
}

Test(progress, line_has_every_field)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_quiet(300, 10, &text, &len);
    progress_set_checkpoint_state("saved 200");
    ProgressStep s = {.step = 210,
                      .loss = 2.25,
                      .lr = 3e-4,
                      .grad_norm = 0.5,
                      .tokens = 1000,
                      .seconds = 0.5,
                      .data_wait = 0.05,
                      .eval_loss = NAN};
    char line[512];
    progress_format_line(&s, line, sizeof(line));
    cr_assert_str_eq(line, "step 210/300 | loss 2.2500 | lr 3.000e-04 | grad norm 0.500 | "
                           "2000 tok/s | data wait 10.0% | ckpt saved 200 | eta ?");
    fclose(f);
    free(text);
}

Test(progress, plain_lines_every_log_every)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_quiet(25, 10, &text, &len);
    for (int i = 1; i <= 25; i++)
        progress_step(&(ProgressStep){.step = i,
                                      .loss = 3.0,
                                      .lr = 1e-3,
                                      .grad_norm = 1,
                                      .tokens = 100,
                                      .seconds = 0.01,
                                      .eval_loss = NAN});
    fflush(f);
    int lines = 0;
    for (char *p = text; *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, 4, "%s", text); /* steps 1, 10, 20, 25 */
    cr_assert(strstr(text, "step  1/25 |") && strstr(text, "step 10/25 |") &&
                  strstr(text, "step 20/25 |") && strstr(text, "step 25/25 |"),
              "%s", text);
    cr_assert(strchr(text, '\r') == NULL);
    MetricsSnapshot m;
    metrics_read_published(&m);
    cr_assert_eq(m.step, 25);
    cr_assert_float_eq(m.tokens_total, 2500.0, 1e-9);
    cr_assert_eq(m.step_count, 25);
    fclose(f);
    free(text);
}

Test(progress, live_bar_on_a_terminal)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    progress_begin(
        &(ProgressOptions){.out = f, .interactive = 1, .total_steps = 4, .log_every = 1});
    for (int i = 1; i <= 4; i++)
        progress_step(&(ProgressStep){.step = i,
                                      .loss = 3.0,
                                      .lr = 1e-3,
                                      .grad_norm = 1,
                                      .tokens = 100,
                                      .seconds = 0.01,
                                      .eval_loss = NAN});
    fflush(f);
    cr_assert(strstr(text, "\r[##########..........] step 2/4 |") != NULL, "%s", text);
    cr_assert(strstr(text, "\r[####################] step 4/4 |") != NULL, "%s", text);
    int newlines = 0;
    for (char *p = text; *p; p++)
        newlines += *p == '\n';
    cr_assert_eq(newlines, 1, "%s", text); /* only the last step ends the line */
    fclose(f);
    free(text);
}

Test(progress, nonfinite_steps_are_counted_and_injected)
{
    char *text = NULL;
    size_t len = 0;
    setenv("DSTRAIN_INJECT_NAN_STEP", "3:2", 1);
    FILE *f = begin_quiet(10, 1, &text, &len);
    unsetenv("DSTRAIN_INJECT_NAN_STEP");
    int updates = 0;
    for (int i = 1; i <= 6; i++) {
        double loss = 2.0, gn = 1.0;
        if (i == 6) gn = INFINITY; /* a real non-finite gradient */
        int ok = progress_check_finite(i, &loss, &gn);
        updates += ok;
        if (i == 3 || i == 4) cr_assert(isnan(loss) && !ok);
        if (i == 4) cr_assert_eq(progress_nonfinite_in_row(), 2);
        if (i == 5) cr_assert_eq(progress_nonfinite_in_row(), 0);
        progress_step(&(ProgressStep){.step = i,
                                      .loss = loss,
                                      .lr = 1e-3,
                                      .grad_norm = gn,
                                      .tokens = 10,
                                      .seconds = 0.01,
                                      .eval_loss = NAN,
                                      .skipped = !ok});
    }
    cr_assert_eq(updates, 3);
    cr_assert_eq(progress_nonfinite_total(), 3);
    cr_assert_eq(progress_nonfinite_in_row(), 1);
    MetricsSnapshot m;
    metrics_read_published(&m);
    cr_assert_eq(m.nonfinite_steps_total, 3);
    cr_assert_float_eq(m.tokens_total, 30.0, 1e-9); /* skipped steps trained nothing */
    cr_assert_eq(progress_warnings(), 3);
    fflush(f);
    cr_assert(strstr(text, "(skipped)") != NULL, "%s", text);
    fclose(f);
    free(text);
}

Test(progress, loss_spike_and_slow_reader_warn)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_quiet(100, 5, &text, &len);
    for (int i = 1; i <= 20; i++) {
        double loss = i == 15 ? 9.0 : 2.0;
        double wait = i > 10 ? 0.5 : 0.0; /* half of every step after step 10 */
        progress_step(&(ProgressStep){.step = i,
                                      .loss = loss,
                                      .lr = 1e-3,
                                      .grad_norm = 1,
                                      .tokens = 10,
                                      .seconds = 1.0,
                                      .data_wait = wait,
                                      .eval_loss = NAN});
    }
    /* one spike warning (step 15), one reader warning (step 15's report, not again at 20) */
    cr_assert_eq(progress_warnings(), 2);
    fclose(f);
    free(text);
}

Test(progress, checkpoint_setters_reach_the_metrics)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = begin_quiet(10, 1, &text, &len);
    progress_step(&(ProgressStep){.step = 1,
                                  .loss = 2,
                                  .lr = 1e-3,
                                  .grad_norm = 1,
                                  .tokens = 10,
                                  .seconds = 0.1,
                                  .eval_loss = NAN});
    progress_checkpoint_done(1, 2.5, 0.01, 1);
    progress_set_ewc_penalty(0.5);
    progress_set_replay_size(64);
    MetricsSnapshot m;
    progress_snapshot(&m);
    cr_assert_float_eq(m.checkpoint_duration_seconds, 2.5, 1e-12);
    cr_assert_gt(m.checkpoint_last_success_timestamp_seconds, 1.7e9);
    cr_assert_float_eq(m.ewc_penalty, 0.5, 1e-12);
    cr_assert_float_eq(m.replay_buffer_size, 64, 1e-12);
    cr_assert_eq(progress_warnings(), 0);
    progress_checkpoint_done(2, 9.0, 3.0, 1); /* 3 s of stall, 30 mean steps: warns */
    cr_assert_eq(progress_warnings(), 1);
    char line[512];
    progress_format_line(&(ProgressStep){.step = 2, .loss = 2, .seconds = 1, .eval_loss = NAN},
                         line, sizeof(line));
    cr_assert(strstr(line, "ckpt saved 2 (9.0s)") != NULL, "%s", line);
    fclose(f);
    free(text);
}

/* ---- the server ------------------------------------------------------------------------------ */

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
    return fd;
}

/* Send req (may be NULL), read the answer until the server closes; returns bytes read, -1 when
 * the server did not close within timeout_ms. */
static ssize_t exchange(int fd, const char *req, size_t req_len, char *buf, size_t cap,
                        int timeout_ms)
{
    if (req) {
        size_t off = 0;
        while (off < req_len) {
            ssize_t n = send(fd, req + off, req_len - off, MSG_NOSIGNAL);
            if (n <= 0) break; /* the server may close mid-request (431) */
            off += (size_t)n;
        }
    }
    size_t got = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0) return -1;
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return (ssize_t)got;
}

static ssize_t request(int port, const char *req, char *buf, size_t cap)
{
    int fd = connect_to(port);
    ssize_t n = exchange(fd, req, strlen(req), buf, cap, 3000);
    close(fd);
    return n;
}

/* The request parser on buffers (what conn_read hands it): each answer and when it waits. */
Test(metrics_request, answers_and_waits)
{
    static const struct {
        const char *head;
        int complete, route, head_only, code;
    } cases[] = {
        {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 1, METRICS_ROUTE_METRICS, 0, 200},
        {"HEAD /metrics?x=1 HTTP/1.0\n\n", 1, METRICS_ROUTE_METRICS, 1, 200},
        {"GET /healthz HTTP/1.1\r\n\r\n", 1, METRICS_ROUTE_HEALTHZ, 0, 200},
        {"GET /other HTTP/1.1\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 404},
        {"POST /metrics HTTP/1.1\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 405},
        {"GET /metrics HTTP/2.0\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 400},
        {"GET /metrics HTTP/1.1 extra\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 400},
        {"GET /met\x1b[2Jrics HTTP/1.1\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 400},
        {"\r\n\r\n", 1, METRICS_ROUTE_ERROR, 0, 400},
        {"GET /metrics HTTP/1.1\r\nHost: x\r\n", 0, 0, 0, 0}, /* not complete: read more */
        {"", 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        MetricsRequest rq;
        int done = metrics_parse_request(cases[i].head, strlen(cases[i].head), &rq);
        cr_assert_eq(done, cases[i].complete, "case %zu", i);
        if (!done) continue;
        cr_assert_eq(rq.route, cases[i].route, "case %zu", i);
        cr_assert_eq(rq.code, cases[i].code, "case %zu: %d %s", i, rq.code, rq.reason);
        cr_assert_eq(rq.head_only, cases[i].head_only, "case %zu", i);
    }
    /* a NUL byte anywhere: 400; a head past the limit without its end: 431 */
    MetricsRequest rq;
    cr_assert_eq(metrics_parse_request("GET /metrics\0 HTTP/1.1\r\n\r\n", 26, &rq), 1);
    cr_assert_eq(rq.code, 400);
    static char big[METRICS_MAX_HEADER_BYTES + 2];
    memset(big, 'a', METRICS_MAX_HEADER_BYTES + 1);
    cr_assert_eq(metrics_parse_request(big, METRICS_MAX_HEADER_BYTES, &rq), 0);
    cr_assert_eq(metrics_parse_request(big, METRICS_MAX_HEADER_BYTES + 1, &rq), 1);
    cr_assert_eq(rq.code, 431);
}

Test(metrics_server, serves_metrics_and_healthz)
{
    MetricsServer *srv;
    int port = 0;
    cr_assert_eq(metrics_server_start("127.0.0.1:0", 0, &srv, &port), DS_OK, "%s", ds_last_error());
    cr_assert_gt(port, 0);
    MetricsSnapshot s = sample();
    metrics_publish(&s);
    static char buf[65536];
    cr_assert_gt(request(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", buf, sizeof(buf)), 0);
    cr_assert(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", buf);
    cr_assert(strstr(buf, "Content-Type: text/plain; version=0.0.4") != NULL, "%s", buf);
    cr_assert(strstr(buf, "\r\n\r\n# HELP dstrain_step ") != NULL, "%s", buf);
    cr_assert(strstr(buf, "dstrain_loss 2.5\n") != NULL, "%s", buf);
    char expected[65536];
    metrics_format(&s, expected, sizeof(expected));
    cr_assert_str_eq(strstr(buf, "\r\n\r\n") + 4, expected);
    request(port, "GET /healthz HTTP/1.0\r\n\r\n", buf, sizeof(buf));
    cr_assert(strncmp(buf, "HTTP/1.1 200 OK", 15) == 0 && strstr(buf, "\r\n\r\nok\n"), "%s", buf);
    request(port, "GET /metrics?x=1 HTTP/1.1\n\n", buf, sizeof(buf)); /* bare LF, a query */
    cr_assert(strncmp(buf, "HTTP/1.1 200 OK", 15) == 0, "%s", buf);
    request(port, "GET /nothing HTTP/1.1\r\n\r\n", buf, sizeof(buf));
    cr_assert(strncmp(buf, "HTTP/1.1 404 ", 13) == 0, "%s", buf);
    request(port, "POST /metrics HTTP/1.1\r\n\r\n", buf, sizeof(buf));
    cr_assert(strncmp(buf, "HTTP/1.1 405 ", 13) == 0, "%s", buf);
    metrics_server_stop(srv);
}

Test(metrics_server, hostile_clients_are_closed)
{
    MetricsServer *srv;
    int port = 0;
    cr_assert_eq(metrics_server_start("127.0.0.1:0", 0, &srv, &port), DS_OK, "%s", ds_last_error());
    static char buf[65536];
    /* malformed request lines */
    const char *garbage[] = {"\x16\x03\x01\x02\xff\x01\x7f\x01\xfc\x03\x03\r\n\r\n",
                             "GET\r\n\r\n",
                             "GET /metrics\r\n\r\n",
                             "GET /metrics FTP/1.0\r\n\r\n",
                             "GET /metrics HTTP/1.1 extra\r\n\r\n",
                             "\r\n\r\n"};
    for (size_t i = 0; i < DS_ARRAY_LEN(garbage); i++) {
        cr_assert_gt(request(port, garbage[i], buf, sizeof(buf)), 0, "case %zu", i);
        cr_assert(strncmp(buf, "HTTP/1.1 400 ", 13) == 0, "case %zu: %s", i, buf);
    }
    int fd = connect_to(port); /* a NUL byte in the head */
    cr_assert_gt(exchange(fd, "GET /me\0trics HTTP/1.1\r\n\r\n", 26, buf, sizeof(buf), 3000), 0);
    cr_assert(strncmp(buf, "HTTP/1.1 400 ", 13) == 0, "%s", buf);
    close(fd);
    /* an oversized head: 431, then closed */
    size_t big = 3 * METRICS_MAX_HEADER_BYTES;
    char *req = malloc(big + 1);
    memset(req, 'a', big);
    memcpy(req, "GET /metrics HTTP/1.1\r\nX-Big: ", 30);
    req[big] = 0;
    cr_assert_gt(request(port, req, buf, sizeof(buf)), 0);
    cr_assert(strncmp(buf, "HTTP/1.1 431 ", 13) == 0, "%s", buf);
    free(req);
    /* 100 connections held open at once: the server keeps at most 64 and closes the rest at
     * once; later, an ordinary scrape still works */
    int fds[100];
    for (int i = 0; i < 100; i++)
        fds[i] = connect_to(port);
    int closed_at_once = 0;
    for (int i = 0; i < 100; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        if (poll(&p, 1, i >= METRICS_MAX_CONNECTIONS ? 1000 : 0) > 0 &&
            recv(fds[i], buf, sizeof(buf), 0) == 0)
            closed_at_once++;
    }
    cr_assert_eq(closed_at_once, 100 - METRICS_MAX_CONNECTIONS);
    /* while they are held, the one slot... is none: close them, then scrape */
    for (int i = 0; i < 100; i++)
        close(fds[i]);
    usleep(100000);
    cr_assert_gt(request(port, "GET /healthz HTTP/1.1\r\n\r\n", buf, sizeof(buf)), 0);
    cr_assert(strncmp(buf, "HTTP/1.1 200 OK", 15) == 0, "%s", buf);
    /* a slow client: half a request line, then nothing; closed after the timeout */
    fd = connect_to(port);
    double t0 = ds_now();
    ssize_t n = exchange(fd, "GET /met", 8, buf, sizeof(buf), METRICS_CLIENT_TIMEOUT_MS + 3000);
    double waited = ds_now() - t0;
    cr_assert_eq(n, 0, "server did not close a slow client");
    cr_assert(waited > METRICS_CLIENT_TIMEOUT_MS / 1000.0 - 0.5, "%f", waited);
    close(fd);
    metrics_server_stop(srv);
}

Test(metrics_server, busy_port_is_an_input_error)
{
    MetricsServer *a, *b;
    int port = 0;
    cr_assert_eq(metrics_server_start("127.0.0.1:0", 0, &a, &port), DS_OK);
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    cr_assert_eq(metrics_server_start(listen, 0, &b, NULL), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "cannot listen") != NULL, "%s", ds_last_error());
    cr_assert_null(b);
    metrics_server_stop(a);
}

Test(progress, preparation_task_lines_in_a_pipe, .init = cr_redirect_stdout)
{
    ProgressTask t;
    progress_task_begin(&t, "packing", 100, "documents");
    for (int i = 1; i <= 100; i++)
        progress_task_update(&t, i);
    progress_task_end(&t);
    ProgressTask u; /* unknown total */
    progress_task_begin(&u, "loading weights", 0, "");
    progress_task_end(&u);
    fflush(stdout);
    FILE *f = cr_get_redirected_stdout();
    char text[8192];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = 0;
    int lines = 0;
    for (char *p = text; *p; p++)
        lines += *p == '\n';
    /* begin, one line per 10%, the end; then begin and end of the second */
    cr_assert_eq(lines, 14, "%s", text);
    cr_assert(strncmp(text, "dstrain: packing ...\n", 21) == 0, "%s", text);
    cr_assert(strstr(text, "\ndstrain: packing: 50/100 documents (50%), eta ") != NULL, "%s", text);
    cr_assert(strstr(text, "\ndstrain: packing: 100/100 documents (100%), done in ") != NULL, "%s",
              text);
    cr_assert(strstr(text, "\ndstrain: loading weights ...\ndstrain: loading weights: done in ") !=
                  NULL,
              "%s", text);
}

Test(metrics_format, every_metric_passes_promtool)
{
    /* a GPU run with EWC and replay: every optional metric present */
    MetricsSnapshot s = sample();
    s.mfu_ratio = 0.4;
    s.gpu_memory_bytes = 8e9;
    s.ewc_penalty = 0.01;
    s.replay_buffer_size = 500;
    s.checkpoint_duration_seconds = 1.5;
    s.checkpoint_last_success_timestamp_seconds = 1.8e9;
    char *t = format(&s);
    char path[1024];
    snprintf(path, sizeof(path), "%s/ops_promtool.txt", DSTRAIN_TEST_TMP);
    (void)system("mkdir -p " DSTRAIN_TEST_TMP);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(t, f);
    fclose(f);
    free(t);
    char cmd[2200];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    cr_assert_eq(system(cmd), 0, "promtool (tools/install-deps.sh installs it) rejected %s", path);
}
