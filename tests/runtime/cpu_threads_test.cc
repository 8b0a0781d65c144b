// How the CPU's cores are split between batcher workers and intra-op threads
// (cpu_threads.h), and the container CPU limit that bounds them.
#include "core/runtime/cpu_threads.h"

#include <gtest/gtest.h>
#include <sched.h>

namespace atman::runtime {
namespace {

TEST(CpuThreads, AutoIsAWorkerPerCoreWithOneThreadEach) {
  EXPECT_EQ(PlanCpuThreads(0, 2).workers, 2);
  EXPECT_EQ(PlanCpuThreads(0, 2).intra_op_threads, 1);
  EXPECT_EQ(PlanCpuThreads(0, 1).workers, 1);
  // Many cores: at most kMaxAutoCpuWorkers workers; the rest of the cores go to their ops.
  EXPECT_EQ(PlanCpuThreads(0, 64).workers, kMaxAutoCpuWorkers);
  EXPECT_EQ(PlanCpuThreads(0, 64).intra_op_threads, 64 / kMaxAutoCpuWorkers);
  // No core counted (cannot happen; UsableCpus is >= 1): still one worker, one thread.
  EXPECT_EQ(PlanCpuThreads(0, 0).workers, 1);
  EXPECT_EQ(PlanCpuThreads(0, 0).intra_op_threads, 1);
}

TEST(CpuThreads, AskedWorkersShareTheCores) {
  EXPECT_EQ(PlanCpuThreads(1, 8).workers, 1);
  EXPECT_EQ(PlanCpuThreads(1, 8).intra_op_threads, 8);
  EXPECT_EQ(PlanCpuThreads(3, 8).intra_op_threads, 2);
  EXPECT_EQ(PlanCpuThreads(12, 8).workers, 12);  // as asked, even past the cores
  EXPECT_EQ(PlanCpuThreads(12, 8).intra_op_threads, 1);
}

TEST(CpuThreads, CgroupV2LimitRoundsUp) {
  EXPECT_EQ(CpuLimitFromCgroupV2("max 100000\n"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("200000 100000\n"), 2);
  EXPECT_EQ(CpuLimitFromCgroupV2("150000 100000"), 2);  // 1.5 cores: 2 threads may run
  EXPECT_EQ(CpuLimitFromCgroupV2("50000 100000"), 1);
  EXPECT_EQ(CpuLimitFromCgroupV2(""), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("garbage"), 0);
  EXPECT_EQ(CpuLimitFromCgroupV2("-1 100000"), 0);
}

TEST(CpuThreads, UsableCpusIsAtLeastOneAndAtMostTheMachine) {
  const int32_t cpus = UsableCpus();
  EXPECT_GE(cpus, 1);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  EXPECT_LE(cpus, CPU_COUNT(&set));
}

}  // namespace
}  // namespace atman::runtime
