#include "core/runtime/memory_meter.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <new>

#include "core/base/status_macros.h"

// The sanitizers' allocators report a huge allocation as an error instead of failing it.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ATMAN_SANITIZED_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ATMAN_SANITIZED_ALLOCATOR 1
#endif
#endif

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

TEST(MemoryMeter, CpuCapacityIsAvailableAndTotalMemory) {
  auto capacity = ReadCapacity(c10::Device(c10::kCPU));
  ASSERT_TRUE(capacity.ok()) << capacity.status();
  EXPECT_GT(capacity->free_bytes, 0);
  EXPECT_GE(capacity->total_bytes, capacity->free_bytes);
}

TEST(MemoryMeter, DefaultBudgetIsFreeMemoryLessAMarginPerWorker) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  const c10::Device cpu(c10::kCPU), cuda(c10::kCUDA, 1);
  // CPU: half of what is free, shared by the workers.
  EXPECT_EQ(DefaultMemoryBudget(cpu, {16 * kGiB, 64 * kGiB}, 1), 8 * kGiB);
  EXPECT_EQ(DefaultMemoryBudget(cpu, {16 * kGiB, 64 * kGiB}, 2), 4 * kGiB);
  // CUDA: free less max(1 GiB, 10% of total).
  EXPECT_EQ(DefaultMemoryBudget(cuda, {60 * kGiB, 80 * kGiB}, 1), 52 * kGiB);
  EXPECT_EQ(DefaultMemoryBudget(cuda, {60 * kGiB, 80 * kGiB}, 4), 13 * kGiB);
  EXPECT_EQ(DefaultMemoryBudget(cuda, {5 * kGiB, 8 * kGiB}, 1), 4 * kGiB);
  // Less free than the margin: one row per batch, not an error.
  EXPECT_EQ(DefaultMemoryBudget(cuda, {kGiB / 2, 8 * kGiB}, 1), 1);
}

// With the accounting installed, the CPU allocator's refusal (a plain c10::Error in LibTorch)
// is thrown as c10::OutOfMemoryError, and becomes an out-of-memory status by its type.
TEST(OutOfMemory, ARefusedCpuAllocationIsOutOfMemoryByType) {
#ifdef ATMAN_SANITIZED_ALLOCATOR
  GTEST_SKIP() << "the sanitizer's allocator aborts on a 1 PiB allocation instead of failing it";
#else
  InstallCpuAccounting();
  absl::Status status;
  try {
    at::Tensor huge = at::empty({int64_t{1} << 50}, at::kByte);  // 1 PiB
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const c10::OutOfMemoryError& e) {
    status = StatusFromException(e, "scoring batch");
  }
  EXPECT_TRUE(IsOutOfMemory(status)) << status;
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(status.message()).rfind("scoring batch: ", 0), 0u) << status;
#endif
}

TEST(OutOfMemory, StatusesKeepTheKindThroughAnnotateAndOthersAreNotIt) {
  const absl::Status oom = OutOfMemoryError("batch of 32 rows");
  EXPECT_TRUE(IsOutOfMemory(oom));
  const absl::Status annotated = Annotate(oom, "device cuda:1");
  EXPECT_TRUE(IsOutOfMemory(annotated));
  EXPECT_EQ(annotated.message(), "device cuda:1: batch of 32 rows");
  EXPECT_TRUE(IsOutOfMemory(StatusFromException(std::bad_alloc(), "copy")));
  // A full queue is RESOURCE_EXHAUSTED too, but not out of memory.
  EXPECT_FALSE(IsOutOfMemory(absl::ResourceExhaustedError("queue full")));
  // Any other LibTorch error (here a shape mismatch) is INTERNAL.
  absl::Status other;
  try {
    at::matmul(at::zeros({2, 3}), at::zeros({4, 5}));
  } catch (const c10::Error& e) {
    other = StatusFromException(e, "forward pass");
  }
  EXPECT_EQ(other.code(), absl::StatusCode::kInternal);
  EXPECT_FALSE(IsOutOfMemory(other));
  // A message that says "out of memory" does not make a status out of memory.
  EXPECT_FALSE(IsOutOfMemory(absl::InternalError("CUDA out of memory")));
}

}  // namespace
}  // namespace atman::runtime
