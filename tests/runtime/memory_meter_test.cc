#include "core/runtime/memory_meter.h"

#include <ATen/ops/empty.h>
#include <gtest/gtest.h>

namespace atman::runtime {
namespace {

TEST(MemoryMeter, CountsCpuAllocationsAndTheirPeak) {
  InstallCpuAccounting();
  InstallCpuAccounting();  // idempotent
  ASSERT_TRUE(CpuAccountingInstalled());
  const c10::Device cpu(c10::kCPU);
  const int64_t before = ReadMemory(cpu).allocated_bytes;
  ResetPeak(cpu);
  {
    at::Tensor a = at::empty({1 << 20}, at::kFloat);  // 4 MiB
    EXPECT_EQ(ReadMemory(cpu).allocated_bytes - before, 4 << 20);
    {
      at::Tensor b = at::empty({1 << 19}, at::kFloat);  // 2 MiB more
      EXPECT_EQ(ReadMemory(cpu).allocated_bytes - before, 6 << 20);
    }
    EXPECT_EQ(ReadMemory(cpu).allocated_bytes - before, 4 << 20);
  }
  EXPECT_EQ(ReadMemory(cpu).allocated_bytes, before);
  EXPECT_EQ(ReadMemory(cpu).peak_bytes - before, 6 << 20);
  ResetPeak(cpu);
  EXPECT_EQ(ReadMemory(cpu).peak_bytes, before);
}

}  // namespace
}  // namespace atman::runtime
