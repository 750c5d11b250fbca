/* metrics_server.c: the Prometheus endpoint. A libuv loop on its own thread accepts loopback
 * (or, with metrics.allow_remote, any) connections, reads one request head, answers /metrics or
 * /healthz and closes. It never touches training state: it reads the published snapshot under a
 * mutex held for one memcpy. Hostile clients are bounded: head size (431), malformed heads (400),
 * a per-connection timer (slow clients), and a connection cap. */
#include "metrics_server.h"

#include <arpa/inet.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "common.h"

const double metrics_step_bucket_bounds[METRICS_STEP_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

/* ---- the snapshot -------------------------------------------------------------------------- */

static pthread_mutex_t published_lock = PTHREAD_MUTEX_INITIALIZER;
static MetricsSnapshot published;
static int published_valid;

void metrics_snapshot_init(MetricsSnapshot *s)
{
    memset(s, 0, sizeof(*s));
    s->loss = s->learning_rate = s->grad_norm = NAN;
    s->mfu_ratio = s->gpu_memory_bytes = s->ewc_penalty = s->replay_buffer_size = NAN;
    s->replay_share = s->task_index = s->task_count = NAN;
    s->checkpoint_duration_seconds = NAN;
}

void metrics_snapshot_observe_step(MetricsSnapshot *s, double seconds)
{
    for (int i = 0; i < METRICS_STEP_BUCKETS; i++)
        if (seconds <= metrics_step_bucket_bounds[i]) {
            s->step_bucket_counts[i]++;
            break;
        }
    s->step_count++;
    s->step_seconds_sum += seconds;
}

void metrics_publish(const MetricsSnapshot *s)
{
    pthread_mutex_lock(&published_lock);
    memcpy(&published, s, sizeof(published));
    published_valid = 1;
    pthread_mutex_unlock(&published_lock);
}

void metrics_read_published(MetricsSnapshot *out)
{
    pthread_mutex_lock(&published_lock);
    if (published_valid)
        memcpy(out, &published, sizeof(*out));
    else
        metrics_snapshot_init(out);
    pthread_mutex_unlock(&published_lock);
}

/* ---- text format 0.0.4 --------------------------------------------------------------------- */

typedef struct Out {
    char *buf;
    size_t cap, len;
} Out;

static void out_printf(Out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(Out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

/* Prometheus spells non-finite values +Inf, -Inf, NaN; %.17g keeps every bit of a double. */
static void out_value(Out *o, double v)
{
    if (isnan(v))
        out_printf(o, "NaN\n");
    else if (isinf(v))
        out_printf(o, v > 0 ? "+Inf\n" : "-Inf\n");
    else
        out_printf(o, "%.17g\n", v);
}

static void out_metric(Out *o, const char *name, const char *type, const char *help, double v)
{
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s ", name, help, name, type, name);
    out_value(o, v);
}

size_t metrics_format(const MetricsSnapshot *s, char *buf, size_t cap)
{
    Out o = {buf, cap, 0};
    if (cap) buf[0] = 0;
    out_metric(&o, "dstrain_step", "gauge", "Optimizer steps done, skipped steps included.",
               (double)s->step);
    out_metric(&o, "dstrain_steps_planned", "gauge", "Steps this run is configured for.",
               (double)s->total_steps);
    out_metric(&o, "dstrain_tokens_total", "counter", "Tokens trained on, all ranks.",
               s->tokens_total);
    /* a gauge with no value yet (before the first step) is left out rather than reported */
    if (!isnan(s->loss))
        out_metric(&o, "dstrain_loss", "gauge", "Training loss of the last step.", s->loss);
    if (!isnan(s->learning_rate))
        out_metric(&o, "dstrain_learning_rate", "gauge", "Learning rate of the last step.",
                   s->learning_rate);
    if (!isnan(s->grad_norm))
        out_metric(&o, "dstrain_grad_norm", "gauge",
                   "Global gradient norm of the last step, before clipping.", s->grad_norm);
    out_metric(&o, "dstrain_tokens_per_second", "gauge", "Training throughput of the last step.",
               s->tokens_per_second);
    if (!isnan(s->mfu_ratio))
        out_metric(&o, "dstrain_mfu_ratio", "gauge",
                   "Model FLOPs utilization of the last step (0..1).", s->mfu_ratio);

    const char *h = "dstrain_step_duration_seconds";
    out_printf(&o, "# HELP %s Wall time of one optimizer step.\n# TYPE %s histogram\n", h, h);
    uint64_t cumulative = 0;
    for (int i = 0; i < METRICS_STEP_BUCKETS; i++) {
        cumulative += s->step_bucket_counts[i];
        out_printf(&o, "%s_bucket{le=\"%g\"} %llu\n", h, metrics_step_bucket_bounds[i],
                   (unsigned long long)cumulative);
    }
    out_printf(&o, "%s_bucket{le=\"+Inf\"} %llu\n", h, (unsigned long long)s->step_count);
    out_printf(&o, "%s_sum ", h);
    out_value(&o, s->step_seconds_sum);
    out_printf(&o, "%s_count %llu\n", h, (unsigned long long)s->step_count);

    out_metric(&o, "dstrain_data_wait_seconds_total", "counter",
               "Time the step loop waited for the data reader.", s->data_wait_seconds_total);
    if (!isnan(s->checkpoint_duration_seconds))
        out_metric(&o, "dstrain_checkpoint_duration_seconds", "gauge",
                   "Duration of the last completed checkpoint save.",
                   s->checkpoint_duration_seconds);
    out_metric(&o, "dstrain_checkpoint_last_success_timestamp_seconds", "gauge",
               "Unix time of the last successful checkpoint (0: none yet).",
               s->checkpoint_last_success_timestamp_seconds);
    if (!isnan(s->gpu_memory_bytes))
        out_metric(&o, "dstrain_gpu_memory_bytes", "gauge",
                   "Device memory of rank 0's buffers (parameters, gradients, optimizer state, "
                   "activations).",
                   s->gpu_memory_bytes);
    if (!isnan(s->ewc_penalty))
        out_metric(&o, "dstrain_ewc_penalty", "gauge", "EWC penalty term of the last step.",
                   s->ewc_penalty);
    if (!isnan(s->replay_buffer_size))
        out_metric(&o, "dstrain_replay_buffer_size", "gauge", "Examples held in the replay buffer.",
                   s->replay_buffer_size);
    if (!isnan(s->replay_share))
        out_metric(&o, "dstrain_replay_share", "gauge",
                   "Share of the last step's rows drawn from the replay buffer.", s->replay_share);
    if (!isnan(s->task_index)) {
        out_metric(&o, "dstrain_task_index", "gauge",
                   "Task of the sequence being trained (0-based).", s->task_index);
        out_metric(&o, "dstrain_task_count", "gauge", "Tasks in the sequence.", s->task_count);
    }
    out_metric(&o, "dstrain_nonfinite_steps_total", "counter",
               "Steps skipped because the loss or a gradient was not finite.",
               (double)s->nonfinite_steps_total);
    if (s->expert_load_layers > 0) {
        const char *e = "dstrain_expert_load_ratio";
        out_printf(&o,
                   "# HELP %s Tokens of the layer's busiest routed expert over the mean of its "
                   "experts, last step (1: balanced).\n# TYPE %s gauge\n",
                   e, e);
        for (int l = 0; l < s->expert_load_layers && l < METRICS_MAX_LAYERS; l++)
            if (!isnan(s->expert_load[l])) {
                out_printf(&o, "%s{layer=\"%d\"} ", e, l);
                out_value(&o, s->expert_load[l]);
            }
    }
    return o.len;
}

/* ---- listen address -------------------------------------------------------------------------- */

int metrics_parse_listen(const char *listen, int allow_remote, char *host, size_t host_cap,
                         int *port)
{
    const char *colon;
    char h[256];
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':')
            return ds_error(DS_ERR_INPUT, "metrics.listen: \"%s\": expected [IPV6]:PORT", listen);
        snprintf(h, sizeof(h), "%.*s", (int)(close - listen - 1), listen + 1);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon || colon == listen)
            return ds_error(DS_ERR_INPUT, "metrics.listen: \"%s\": expected HOST:PORT", listen);
        snprintf(h, sizeof(h), "%.*s", (int)(colon - listen), listen);
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return ds_error(DS_ERR_INPUT, "metrics.listen: \"%s\": port must be 0..65535", listen);
    if (strcmp(h, "localhost") == 0) snprintf(h, sizeof(h), "127.0.0.1");
    struct in_addr a4;
    struct in6_addr a6;
    int loopback;
    if (inet_pton(AF_INET, h, &a4) == 1)
        loopback = (ntohl(a4.s_addr) >> 24) == 127;
    else if (inet_pton(AF_INET6, h, &a6) == 1)
        loopback = IN6_IS_ADDR_LOOPBACK(&a6);
    else
        return ds_error(DS_ERR_INPUT,
                        "metrics.listen: \"%s\": host must be an IP address or localhost", listen);
    if (!loopback && !allow_remote)
        return ds_error(DS_ERR_INPUT,
                        "metrics.listen: %s is not a loopback address; set "
                        "metrics.allow_remote: true to serve metrics beyond this machine",
                        h);
    snprintf(host, host_cap, "%s", h);
    *port = (int)p;
    return DS_OK;
}

/* ---- the server ------------------------------------------------------------------------------ */

#define RESPONSE_CAP 16384

typedef struct Conn {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    uv_timer_t timer;
    uv_write_t write_req;
    struct MetricsServer *srv;
    size_t head_len;
    int responded, closing, handles_open;
    char head[METRICS_MAX_HEADER_BYTES + 2]; /* one byte past the limit, and a NUL */
    char response[RESPONSE_CAP];
} Conn;

struct MetricsServer {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_thread_t thread;
    int connections;
    unsigned long long served, rejected;
    char url[300];
};

static void conn_handle_closed(uv_handle_t *h)
{
    Conn *c = h->data;
    if (--c->handles_open == 0) {
        c->srv->connections--;
        free(c);
    }
}

static void conn_close(Conn *c)
{
    if (c->closing) return;
    c->closing = 1;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static void conn_after_write(uv_write_t *req, int status)
{
    conn_close(req->data);
}

static void conn_respond(Conn *c, int code, const char *reason, const char *type, const char *body,
                         size_t body_len)
{
    if (c->responded) return;
    c->responded = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    int n = snprintf(c->response, RESPONSE_CAP,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     code, reason, type, body_len);
    size_t len = (size_t)n;
    if (body && len + body_len <= RESPONSE_CAP) {
        memmove(c->response + len, body, body_len);
        len += body_len;
    }
    uv_buf_t buf = uv_buf_init(c->response, (unsigned)len);
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, conn_after_write) != 0)
        conn_close(c);
}

static void conn_error(Conn *c, int code, const char *reason)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", code, reason);
    conn_respond(c, code, reason, "text/plain; charset=utf-8", body, (size_t)n);
}

int metrics_parse_request(const char *head, size_t len, MetricsRequest *out)
{
    *out = (MetricsRequest){METRICS_ROUTE_ERROR, 0, 400, "Bad Request"};
    if (memchr(head, 0, len)) return 1;
    const char *end = strstr(head, "\r\n\r\n");
    if (!end) end = strstr(head, "\n\n");
    if (!end) {
        if (len <= METRICS_MAX_HEADER_BYTES) return 0;
        *out = (MetricsRequest){METRICS_ROUTE_ERROR, 0, 431, "Request Header Fields Too Large"};
        return 1;
    }
    /* the request line, copied out: only GET and HEAD of two paths */
    size_t line_len = strcspn(head, "\r\n");
    char line[METRICS_MAX_HEADER_BYTES + 1];
    if (line_len > METRICS_MAX_HEADER_BYTES) return 1;
    memcpy(line, head, line_len);
    line[line_len] = 0;
    char method[8], target[256], version[16], extra;
    if (sscanf(line, "%7s %255s %15s %c", method, target, version, &extra) != 3 ||
        strncmp(version, "HTTP/1.", 7) != 0 || (version[7] != '0' && version[7] != '1') ||
        version[8] != 0)
        return 1;
    for (const char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) return 1;
    out->head_only = strcmp(method, "HEAD") == 0;
    if (!out->head_only && strcmp(method, "GET") != 0) {
        out->code = 405, out->reason = "Method Not Allowed";
        return 1;
    }
    char *query = strchr(target, '?');
    if (query) *query = 0;
    out->code = 200, out->reason = "OK";
    if (strcmp(target, "/metrics") == 0)
        out->route = METRICS_ROUTE_METRICS;
    else if (strcmp(target, "/healthz") == 0)
        out->route = METRICS_ROUTE_HEALTHZ;
    else
        out->code = 404, out->reason = "Not Found";
    return 1;
}

/* Answer a parsed request (metrics_parse_request). */
static void conn_answer(Conn *c, const MetricsRequest *rq)
{
    if (rq->route == METRICS_ROUTE_ERROR) {
        if (rq->code == 431) c->srv->rejected++;
        return conn_error(c, rq->code, rq->reason);
    }
    if (rq->route == METRICS_ROUTE_METRICS) {
        MetricsSnapshot s;
        metrics_read_published(&s);
        char body[RESPONSE_CAP - 256]; /* conn_respond puts the status line before it */
        size_t n = metrics_format(&s, body, sizeof(body));
        if (n >= sizeof(body)) return conn_error(c, 500, "Internal Server Error");
        c->srv->served++;
        conn_respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                     rq->head_only ? NULL : body, rq->head_only ? 0 : n);
        return;
    }
    c->srv->served++;
    conn_respond(c, 200, "OK", "text/plain; charset=utf-8", rq->head_only ? NULL : "ok\n",
                 rq->head_only ? 0 : 3);
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    Conn *c = h->data;
    /* read at most one byte past the limit: enough to know the head is too large */
    size_t room = METRICS_MAX_HEADER_BYTES + 1 - c->head_len;
    *buf = uv_buf_init(c->head + c->head_len, (unsigned)room);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    Conn *c = s->data;
    if (nread < 0) return conn_close(c); /* EOF or error before a complete head */
    if (nread == 0 || c->responded) return;
    c->head_len += (size_t)nread;
    c->head[c->head_len] = 0;
    MetricsRequest rq;
    if (metrics_parse_request(c->head, c->head_len, &rq)) conn_answer(c, &rq);
}

static void conn_timeout(uv_timer_t *t)
{
    Conn *c = t->data;
    if (!c->responded) c->srv->rejected++;
    conn_close(c); /* a slow client, or one that does not read its answer */
}

static void on_connection(uv_stream_t *listener, int status)
{
    MetricsServer *srv = listener->data;
    if (status < 0) return;
    Conn *c = calloc(1, sizeof(Conn));
    if (!c) return;
    c->srv = srv;
    uv_tcp_init(&srv->loop, &c->tcp);
    uv_timer_init(&srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    srv->connections++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        srv->connections > METRICS_MAX_CONNECTIONS) {
        srv->rejected++;
        return conn_close(c);
    }
    uv_timer_start(&c->timer, conn_timeout, METRICS_CLIENT_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read) != 0) conn_close(c);
}

static void close_any(uv_handle_t *h, void *arg)
{
    if (uv_is_closing(h)) return;
    if (h->type == UV_TCP && h->data && h->data != arg) {
        conn_close(h->data); /* a connection: closes its timer too */
        return;
    }
    if (h->type == UV_TIMER) return; /* a connection's timer, closed with it */
    uv_close(h, NULL);
}

static void on_stop(uv_async_t *a)
{
    MetricsServer *srv = a->data;
    uv_walk(&srv->loop, close_any, srv);
}

static void server_thread(void *arg)
{
    MetricsServer *srv = arg;
    uv_run(&srv->loop, UV_RUN_DEFAULT);
}

int metrics_server_start(const char *listen, int allow_remote, MetricsServer **out, int *bound_port)
{
    char host[256];
    int port;
    *out = NULL;
    DS_TRY(metrics_parse_listen(listen, allow_remote, host, sizeof(host), &port));
    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc != 0) return ds_error(DS_ERR_INPUT, "metrics.listen: %s: %s", listen, uv_strerror(rc));
    MetricsServer *srv = ds_calloc(1, sizeof(MetricsServer));
    if (!srv) return DS_ERR_INTERNAL;
    if ((rc = uv_loop_init(&srv->loop)) != 0) {
        free(srv);
        return ds_error(DS_ERR_INTERNAL, "metrics server: %s", uv_strerror(rc));
    }
    uv_tcp_init(&srv->loop, &srv->listener);
    srv->listener.data = srv;
    uv_async_init(&srv->loop, &srv->stop, on_stop);
    srv->stop.data = srv;
    if ((rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection)) != 0) {
        int status = ds_error(DS_ERR_INPUT, "metrics.listen: %s: cannot listen: %s", listen,
                              uv_strerror(rc));
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_close((uv_handle_t *)&srv->stop, NULL);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv->loop);
        free(srv);
        return status;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    int p = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
    if (bound_port) *bound_port = p;
    snprintf(srv->url, sizeof(srv->url), strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d",
             host, p);
    if ((rc = uv_thread_create(&srv->thread, server_thread, srv)) != 0) {
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_close((uv_handle_t *)&srv->stop, NULL);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv->loop);
        free(srv);
        return ds_error(DS_ERR_INTERNAL, "metrics server: thread: %s", uv_strerror(rc));
    }
    *out = srv;
    return DS_OK;
}

const char *metrics_server_url(const MetricsServer *srv)
{
    return srv->url;
}

void metrics_server_stop(MetricsServer *srv)
{
    if (!srv) return;
    uv_async_send(&srv->stop);
    uv_thread_join(&srv->thread);
    uv_loop_close(&srv->loop);
    free(srv);
}
