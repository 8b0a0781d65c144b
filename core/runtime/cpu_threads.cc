#include "core/runtime/cpu_threads.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

namespace atman::runtime {
namespace {

int32_t CeilDiv(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int32_t>(std::min<int64_t>((quota + period - 1) / period, 1 << 20));
}

std::string ReadSmallFile(const char* path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

CpuThreads PlanCpuThreads(int32_t requested_workers, int32_t usable_cpus) {
  const int32_t cpus = std::max<int32_t>(1, usable_cpus);
  CpuThreads plan;
  plan.workers = requested_workers > 0 ? requested_workers : std::min(cpus, kMaxAutoCpuWorkers);
  plan.intra_op_threads = std::max<int32_t>(1, cpus / plan.workers);
  return plan;
}

int32_t CpuLimitFromCgroupV2(const std::string& cpu_max) {
  std::istringstream in(cpu_max);
  std::string quota;
  int64_t period = 0;
  if (!(in >> quota >> period) || quota == "max") return 0;
  try {
    return CeilDiv(std::stoll(quota), period);
  } catch (...) {
    return 0;
  }
}

int32_t UsableCpus() {
  int32_t cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int32_t>(std::thread::hardware_concurrency());
  int32_t limit = CpuLimitFromCgroupV2(ReadSmallFile("/sys/fs/cgroup/cpu.max"));
  if (limit == 0) {  // cgroup v1
    std::istringstream quota(ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"));
    std::istringstream period(ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
    int64_t q = 0, p = 0;
    if ((quota >> q) && (period >> p)) limit = CeilDiv(q, p);
  }
  if (limit > 0) cpus = std::min(cpus, limit);
  return std::max<int32_t>(1, cpus);
}

}  // namespace atman::runtime
