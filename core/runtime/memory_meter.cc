#include "core/runtime/memory_meter.h"

#include <ATen/DeviceAccelerator.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <fstream>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::runtime {
namespace {

// Counts bytes handed out by the wrapped allocator. The DataPtrs it returns are "simple"
// (context == data), as LibTorch's raw_allocate()/raw_deallocate() users (oneDNN scratch
// space, for one) require: sizes and the wrapped deleters are kept in a table by address.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner;
    try {
      inner = inner_->allocate(n);
    } catch (const c10::OutOfMemoryError&) {
      throw;
    } catch (const c10::Error& e) {
      // LibTorch's CPU allocator reports a refused allocation as a plain c10::Error
      // ("DefaultCPUAllocator: can't allocate memory", alloc_cpu.cpp); it throws nothing else.
      // Rethrown as what it is, so that callers recognise it by its type.
      C10_THROW_ERROR(OutOfMemoryError, e.msg());
    }
    void* data = inner.get();
    const c10::Device device = inner.device();
    if (data == nullptr) return inner;  // zero-byte allocations
    TORCH_INTERNAL_ASSERT(inner.get_context() == data, "wrapped CPU allocator is not simple");
    c10::DeleterFnPtr deleter = inner.get_deleter();
    inner.release_context();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[data] = {static_cast<int64_t>(n), deleter};
    }
    Add(static_cast<int64_t>(n));
    return {data, data, &Delete, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    inner_->copy_data(dest, src, count);
  }

  MemoryReading Read() const {
    const int64_t now = current_.load();
    return {now, now, peak_.load()};
  }
  void ResetPeak() { peak_.store(current_.load()); }

 private:
  struct Allocation {
    int64_t bytes;
    c10::DeleterFnPtr deleter;
  };

  static void Delete(void* ptr);

  void Add(int64_t bytes) {
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
  }

  c10::Allocator* inner_;
  std::mutex mutex_;
  std::unordered_map<void*, Allocation> live_;
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

void CountingCpuAllocator::Delete(void* ptr) {
  Allocation allocation{};
  {
    std::lock_guard<std::mutex> lock(counting->mutex_);
    auto it = counting->live_.find(ptr);
    if (it == counting->live_.end()) {
      // Memory allocated before the counter was installed, freed through the current CPU
      // allocator's raw_deallocate (oneDNN does this): the wrapped allocator owns it.
      allocation.deleter = counting->inner_->raw_deleter();
    } else {
      allocation = it->second;
      counting->live_.erase(it);
    }
  }
  counting->Add(-allocation.bytes);
  TORCH_INTERNAL_ASSERT(allocation.deleter != nullptr, "no deleter for a CPU allocation");
  allocation.deleter(ptr);
}

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

absl::StatusOr<DeviceCapacity> ReadCapacity(c10::Device device) {
  if (device.is_cpu()) {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    int64_t kb = 0, available = -1, total = -1;
    while (in >> key >> kb >> unit) {
      if (key == "MemAvailable:") available = kb * 1024;
      if (key == "MemTotal:") total = kb * 1024;
    }
    if (available < 0 || total < 0) {
      return absl::UnavailableError("cpu memory: no MemAvailable / MemTotal in /proc/meminfo");
    }
    return DeviceCapacity{available, total};
  }
  try {
    const auto accelerator = at::accelerator::getAccelerator(/*checked=*/false);
    if (!accelerator.has_value() || *accelerator != device.type()) {
      return absl::UnavailableError(
          absl::StrCat(device.str(), " memory: not the accelerator LibTorch reports"));
    }
    const c10::DeviceIndex index = device.index() < 0 ? 0 : device.index();
    const auto [free, total] = at::accelerator::getMemoryInfo(index);
    const MemoryReading held = ReadMemory(device);
    const int64_t cached = std::max<int64_t>(0, held.reserved_bytes - held.allocated_bytes);
    return DeviceCapacity{static_cast<int64_t>(free) + cached, static_cast<int64_t>(total)};
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));  // c10 errors: a backtrace follows
    return absl::UnavailableError(absl::StrCat(device.str(), " memory: ", what));
  }
}

int64_t DefaultMemoryBudget(c10::Device device, const DeviceCapacity& capacity, int32_t workers) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  const int64_t usable = device.is_cpu()
                             ? capacity.free_bytes / 2
                             : capacity.free_bytes - std::max(kGiB, capacity.total_bytes / 10);
  return std::max<int64_t>(1, usable / std::max<int32_t>(1, workers));
}

}  // namespace atman::runtime
