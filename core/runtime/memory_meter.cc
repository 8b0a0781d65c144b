#include "core/runtime/memory_meter.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <algorithm>
#include <atomic>
#include <mutex>

namespace atman::runtime {
namespace {

// Counts bytes handed out by the wrapped allocator. Each allocation's DataPtr gets a small
// context that remembers the inner DataPtr and its size, and un-counts on delete.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = inner_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    Add(static_cast<int64_t>(n));
    auto* context = new Context{std::move(inner), static_cast<int64_t>(n), this};
    return {data, context, &Delete, device};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    inner_->copy_data(dest, src, count);
  }

  MemoryReading Read() const {
    const int64_t now = current_.load();
    return {now, now, peak_.load()};
  }
  void ResetPeak() { peak_.store(current_.load()); }

 private:
  struct Context {
    c10::DataPtr inner;
    int64_t bytes;
    CountingCpuAllocator* owner;
  };

  static void Delete(void* ptr) {
    auto* context = static_cast<Context*>(ptr);
    context->owner->Add(-context->bytes);
    delete context;  // frees the inner allocation through its own deleter
  }

  void Add(int64_t bytes) {
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }

  c10::Allocator* inner_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

std::once_flag install_once;
CountingCpuAllocator* counting = nullptr;  // lives for the process, as LibTorch requires

}  // namespace

void InstallCpuAccounting() {
  std::call_once(install_once, [] {
    counting = new CountingCpuAllocator(c10::GetCPUAllocator());
    // Priority above the default (0) so that LibTorch's own re-registrations do not win.
    c10::SetCPUAllocator(counting, /*priority=*/100);
  });
}

bool CpuAccountingInstalled() { return counting != nullptr; }

MemoryReading ReadMemory(c10::Device device) {
  if (device.is_cpu()) return counting ? counting->Read() : MemoryReading{};
  auto* allocator = c10::getDeviceAllocator(device.type());
  if (!allocator->initialized()) return {};
  const auto stats = allocator->getDeviceStats(device.index() < 0 ? 0 : device.index());
  constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return {stats.allocated_bytes[kAll].current, stats.reserved_bytes[kAll].current,
          stats.allocated_bytes[kAll].peak};
}

void ResetPeak(c10::Device device) {
  if (device.is_cpu()) {
    if (counting) counting->ResetPeak();
    return;
  }
  auto* allocator = c10::getDeviceAllocator(device.type());
  if (allocator->initialized()) allocator->resetPeakStats(device.index() < 0 ? 0 : device.index());
}

}  // namespace atman::runtime
