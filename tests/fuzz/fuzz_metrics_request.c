/* fuzz_metrics_request.c: the metrics server's HTTP request parser (metrics_parse_request) on
 * the bytes a client sends, as conn_read hands them over: at most METRICS_MAX_HEADER_BYTES + 1,
 * NUL-terminated. Every answer is one the server knows, and it waits only while the head can
 * still be completed within the limit. */
#include "fuzz_util.h"
#include "trainer/metrics_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char head[METRICS_MAX_HEADER_BYTES + 2];
    const size_t len = size < METRICS_MAX_HEADER_BYTES + 1 ? size : METRICS_MAX_HEADER_BYTES + 1;
    memcpy(head, data, len);
    head[len] = 0;
    MetricsRequest rq;
    if (!metrics_parse_request(head, len, &rq)) {
        if (len > METRICS_MAX_HEADER_BYTES) abort(); /* would wait on a full buffer */
        return 0;
    }
    const int known =
        rq.code == 200 || rq.code == 400 || rq.code == 404 || rq.code == 405 || rq.code == 431;
    if (!known || !rq.reason || (rq.code == 200) != (rq.route != METRICS_ROUTE_ERROR)) abort();
    return 0;
}
