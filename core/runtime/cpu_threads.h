// How a CPU-served model spends the machine's cores: batcher workers x LibTorch intra-op
// threads.
//
// A scoring batch of short rows (the common case: a row per unit, most recomputing a few
// positions from the prefix cache) parallelises poorly inside its operators, while batches are
// independent: one single-threaded worker per core serves more than one worker using every
// core (measured on the default model at token granularity, docs/performance.md: 2 workers x 1
// thread 2.2x the requests/s of 1 worker x 2 threads, sequential clients). So on the CPU the
// server's default (`--workers-per-device 0`, auto) is a worker per usable core and one
// intra-op thread each; a single request's batches spread over the workers too.
//
// UsableCpus counts the cores the process may run on: its affinity mask, bounded by a cgroup
// CPU quota (a container's CPU limit: cgroup v2 cpu.max, v1 cpu.cfs_quota_us), rounded up.
//
// Thread safety: pure functions (UsableCpus reads /proc-like files; safe from any thread).
#pragma once

#include <cstdint>
#include <string>

namespace atman::runtime {

// Most workers the auto setting starts per CPU device.
inline constexpr int32_t kMaxAutoCpuWorkers = 16;

struct CpuThreads {
  int32_t workers = 1;           // batcher workers on the CPU device
  int32_t intra_op_threads = 1;  // LibTorch's intra-op pool (at::set_num_threads)
};

// requested_workers 0: auto (one per usable CPU, at most kMaxAutoCpuWorkers); else as asked.
// Intra-op threads share the rest: max(1, usable_cpus / workers).
CpuThreads PlanCpuThreads(int32_t requested_workers, int32_t usable_cpus);

// Cores this process may use (>= 1).
int32_t UsableCpus();

// The cgroup CPU limit in cores (quota / period, rounded up) from the text of cgroup v2's
// cpu.max ("max 100000" or "200000 100000"), or 0 when it sets none. For tests.
int32_t CpuLimitFromCgroupV2(const std::string& cpu_max);

}  // namespace atman::runtime
