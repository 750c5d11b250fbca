/* metrics_server.h: the Prometheus endpoint (metrics.listen) and the snapshot it serves.
 * The step loop publishes a MetricsSnapshot (one memcpy under a mutex, no allocation, no
 * formatting); a libuv loop on its own thread formats text format 0.0.4 on each scrape.
 * Not here: computing the values (trainer/progress.c does) or anything that can stall a step. */
#ifndef DSTRAIN_METRICS_SERVER_H
#define DSTRAIN_METRICS_SERVER_H

#include <stddef.h>
#include <stdint.h>

/* Upper bounds (seconds) of dstrain_step_duration_seconds' buckets; +Inf is implicit. */
#define METRICS_STEP_BUCKETS 14
extern const double metrics_step_bucket_bounds[METRICS_STEP_BUCKETS];

/* The most layers whose expert load a scrape reports (DeepSeek-V3 has 61). */
#define METRICS_MAX_LAYERS 256

/* Everything one scrape reports. NAN marks a value that does not exist in this run (MFU on a
 * CPU, GPU memory without a GPU, EWC without EWC): its metric is left out. */
typedef struct MetricsSnapshot {
    int64_t step; /* optimizer steps done (skipped ones included) */
    int64_t total_steps;
    double tokens_total; /* trained tokens so far (all ranks) */
    double loss, learning_rate, grad_norm;
    double tokens_per_second;
    double mfu_ratio;
    uint64_t step_bucket_counts[METRICS_STEP_BUCKETS]; /* non-cumulative; +Inf = step_count */
    uint64_t step_count;
    double step_seconds_sum;
    double data_wait_seconds_total;
    double checkpoint_duration_seconds;               /* of the last completed save */
    double checkpoint_last_success_timestamp_seconds; /* Unix time; 0 before the first */
    double gpu_memory_bytes;
    double ewc_penalty;
    double replay_buffer_size;
    double replay_share;           /* replayed rows / rows of the last step */
    double task_index, task_count; /* task sequences: the task trained now (0-based) */
    uint64_t nonfinite_steps_total;
    /* mixture of experts, per layer: tokens of the busiest routed expert over the mean of the
     * layer's experts in the last step (NAN for a dense layer); layers 0 without experts */
    int expert_load_layers;
    double expert_load[METRICS_MAX_LAYERS];
} MetricsSnapshot;

/* A snapshot with every optional value NAN and everything else 0. */
void metrics_snapshot_init(MetricsSnapshot *s);
/* Count one step's duration into the histogram. */
void metrics_snapshot_observe_step(MetricsSnapshot *s, double seconds);

/* Publish s as the values the next scrape serves (copy under a mutex; safe from any thread). */
void metrics_publish(const MetricsSnapshot *s);
/* The values last published. */
void metrics_read_published(MetricsSnapshot *out);

/* Format s as Prometheus text format 0.0.4 (HELP and TYPE lines, base units) into buf. Returns
 * the length written, or the length needed (>= cap) when buf is too small, like snprintf. */
size_t metrics_format(const MetricsSnapshot *s, char *buf, size_t cap);

/* Limits against hostile clients. */
#define METRICS_MAX_HEADER_BYTES 8192  /* a longer request head: 431 and close */
#define METRICS_MAX_CONNECTIONS 64     /* further connections are closed at once */
#define METRICS_CLIENT_TIMEOUT_MS 5000 /* a request not complete by then: closed */

typedef struct MetricsServer MetricsServer;

/* What the server answers to a request head: the bytes a client sent so far (len of them,
 * NUL-terminated, at most METRICS_MAX_HEADER_BYTES + 1). No I/O and no state, so it is tested
 * and fuzzed on a buffer. */
typedef enum MetricsRoute {
    METRICS_ROUTE_ERROR = 0, /* answer code and reason, and close */
    METRICS_ROUTE_METRICS,   /* GET or HEAD /metrics (any query) */
    METRICS_ROUTE_HEALTHZ    /* GET or HEAD /healthz */
} MetricsRoute;
typedef struct MetricsRequest {
    MetricsRoute route;
    int head_only; /* HEAD: the status line and headers only */
    int code;      /* 200, or the error's: 400, 404, 405, 431 */
    const char *reason;
} MetricsRequest;
/* 0: the head is not complete yet (read more); 1: *out says what to answer. A NUL byte, a
 * control character or a malformed request line is 400; a head longer than the limit without
 * its end 431; a method other than GET and HEAD 405; another path 404. */
int metrics_parse_request(const char *head, size_t len, MetricsRequest *out);

/* Parse "HOST:PORT" ("[::1]:9400" for IPv6; "localhost" means 127.0.0.1). Loopback addresses
 * only unless allow_remote. Errors name metrics.listen (DS_ERR_INPUT). */
int metrics_parse_listen(const char *listen, int allow_remote, char *host, size_t host_cap,
                         int *port);
/* Bind and serve /metrics and /healthz from a new thread. Port 0 picks a free port; the bound
 * port is in *bound_port (may be NULL). */
int metrics_server_start(const char *listen, int allow_remote, MetricsServer **out,
                         int *bound_port);
/* "http://HOST:PORT" of a started server (the bound port). */
const char *metrics_server_url(const MetricsServer *srv);
/* Stop the thread, close every connection, free. NULL is fine. */
void metrics_server_stop(MetricsServer *srv);

#endif
