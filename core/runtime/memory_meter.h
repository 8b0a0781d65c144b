// Measured memory: how many bytes LibTorch has allocated on a device now and at its peak.
//
// CUDA (and any device with a caching DeviceAllocator): the allocator's own statistics
// (allocated, reserved, peak), so figures match torch.cuda.memory_allocated() and friends.
// CPU: LibTorch's CPU allocator keeps no statistics, so InstallCpuAccounting() wraps it once
// per process in a counting allocator (the wrapped allocator still does the work), which also
// turns the wrapped allocator's refusal (a plain c10::Error) into c10::OutOfMemoryError, the
// type the CUDA allocator throws, so that out of memory is recognised by type. Tensors
// that alias memory LibTorch did not allocate (weights memory-mapped from safetensors) are
// not counted: they are file-backed pages, not allocations.
//
// Peaks are process-wide per device: concurrent passes on the same device share one peak.
// The engine's warm-up measures while nothing else runs.
//
// Capacity: what a device has free (ReadCapacity), and from it the memory budget its scoring
// batches get when the operator sets none (DefaultMemoryBudget). Thread-safe.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace atman::runtime {

struct MemoryReading {
  int64_t allocated_bytes = 0;  // live now
  int64_t reserved_bytes = 0;   // held by the allocator (CUDA caching); = allocated on the CPU
  int64_t peak_bytes = 0;       // highest allocated since the last ResetPeak
};

// Wraps LibTorch's CPU allocator with a counting one; idempotent. Call before the first
// tensor whose memory should be counted (the engine calls it when it is created).
void InstallCpuAccounting();
bool CpuAccountingInstalled();

MemoryReading ReadMemory(c10::Device device);
// Sets the device's peak to its current allocation.
void ResetPeak(c10::Device device);

struct DeviceCapacity {
  int64_t free_bytes = 0;  // what LibTorch could still allocate now
  int64_t total_bytes = 0;
};

// CPU: MemAvailable and MemTotal of /proc/meminfo. An accelerator (CUDA):
// at::accelerator::getMemoryInfo (the driver's free and total memory), plus what LibTorch's
// caching allocator holds reserved but unallocated, which is free to LibTorch though not to
// the driver. Errors: UNAVAILABLE when the figures cannot be read.
absl::StatusOr<DeviceCapacity> ReadCapacity(c10::Device device);

// The budget of bytes one scoring batch may add on `device` when none is configured, read
// after the model is loaded and warmed up: on the CPU half of the free memory (the rest is the
// process's and the system's own); on an accelerator the free memory less a margin of
// max(1 GiB, 10% of total) (the caching allocator's fragmentation, the CUDA context's growth,
// other processes); either divided among the `workers` batches that may run at once on the
// device. At least 1 byte (then every batch is one row).
int64_t DefaultMemoryBudget(c10::Device device, const DeviceCapacity& capacity, int32_t workers);

}  // namespace atman::runtime
