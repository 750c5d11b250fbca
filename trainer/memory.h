/* memory.h: what this machine has against what a run needs, checked before anything large is
 * allocated, so a run that cannot fit stops in a second with both figures instead of swapping,
 * being killed by the kernel or failing a cudaMalloc minutes in. Host memory is physical memory
 * or the memory cgroup's limit when lower (Slurm's --mem), shared by the ranks on one host; a
 * GPU's is its free memory once the backend is up. Not here: the sizes themselves
 * (model_memory_estimate, ewc_memory_estimate). */
#ifndef DSTRAIN_MEMORY_H
#define DSTRAIN_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/ops.h"

/* Bytes of host memory this process may use: physical memory, or the limit of its memory
 * cgroup (v1 or v2, the lowest on the way to the root) when lower. what gets "physical memory"
 * or "the memory cgroup's limit". For tests, DSTRAIN_HOST_MEMORY_BYTES replaces the answer. */
int memory_host_limit(uint64_t *bytes, char *what, size_t cap);

/* The lowest memory limit of the cgroups named in self_cgroup (the format of /proc/self/cgroup)
 * under root (/sys/fs/cgroup: v2 there or in unified/, v1 in memory/), from each group up to the
 * root; 0 when none is set. memory_host_limit's part, open for tests. */
uint64_t memory_cgroup_limit(const char *self_cgroup, const char *root);

/* Free and total bytes of backend be's device (Backend.mem_info; DS_ERR_INPUT for a backend of
 * host memory). For tests, DSTRAIN_DEVICE_MEMORY_BYTES replaces both. */
int memory_device_free(const Backend *be, uint64_t *free_bytes, uint64_t *total_bytes);

/* bytes as "3.50 MiB", "12.25 GiB" (binary units) into buf, which holds 24 bytes. */
const char *memory_bytes_text(char *buf, double bytes);

/* DS_OK when need bytes fit the host's memory (memory_host_limit), else DS_ERR_INPUT with one
 * line: "memory: <subject> needs <need> of host memory, more than the <have> this host has
 * (<which>); <advice>". */
int memory_check_host(double need, const char *subject, const char *advice);

#endif
