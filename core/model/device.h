// Devices, streams, events and host-to-device transfers, written against LibTorch's
// device-generic API (c10::Stream, c10::Event, the device guard registry) so that core/ needs
// no CUDA header and the same code runs on the CPU, where every stream operation is a no-op.
//
//   ResolveDevice   "cuda" without an index means the current CUDA device (cuda:N).
//   PoolStream      a stream from the device's pool (one per batcher worker); none on the CPU.
//   ReadyEvent      recorded on the current stream after work that others will read (the
//                   unperturbed pass of a KvPrefixCache); streams that read wait on it.
//   Upload          host tensor -> device without a host sync: staged in pinned memory and
//                   copied non-blocking on the current stream (a plain view on the CPU).
//   HostStaging     options for host tensors that will be uploaded (pinned on CUDA).
//
// Lifetimes: memory that a pool stream reads must stay allocated until that stream is done
// with it. The runtime guarantees it by holding what a batch reads until the batch's result
// has been copied back (BatchResult waits on its event), so no record-stream is needed.
//
// Stateless functions; safe from any thread. A DeviceEvent is written once (Record) before it
// is shared, then only read (WaitOn, Synchronize) from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <memory>
#include <optional>

#include "absl/status/statusor.h"

namespace atman::model {

// cuda -> cuda:<current device>; INVALID_ARGUMENT for a CUDA device on a machine without
// CUDA or an index past the device count. Other devices are returned as they are.
absl::StatusOr<c10::Device> ResolveDevice(c10::Device device);

// The number of CUDA devices LibTorch sees (0 without CUDA).
int CudaDeviceCount();

// A stream from `device`'s pool, or none where the device has no streams (the CPU).
std::optional<c10::Stream> PoolStream(c10::Device device);

// The calling thread's current stream on `device`, or none on the CPU.
std::optional<c10::Stream> CurrentStream(c10::Device device);

// An event of work enqueued so far on the current stream of a device. On the CPU, work is
// done when it returns, so the event is empty and every operation is a no-op.
class DeviceEvent {
 public:
  DeviceEvent() = default;
  // Records on the calling thread's current stream of `device`.
  static DeviceEvent Record(c10::Device device);

  // Makes the calling thread's current stream of the event's device wait for it (no host sync).
  void WaitOnCurrentStream() const;
  // Blocks the host until the recorded work is done.
  void Synchronize() const;

 private:
  std::shared_ptr<const c10::Event> event_;  // shared by copies; immutable once recorded
};

// Options for a host tensor of `dtype` that will be uploaded to `device`: pinned memory when
// the device is CUDA, so that Upload copies without a host sync.
at::TensorOptions HostStaging(c10::Device device, c10::ScalarType dtype);

// `host` (a CPU tensor) on `device`. On CUDA: pinned (copied into pinned memory first if it is
// not) and copied non-blocking on the current stream; the pinned block is kept until the copy
// is done by LibTorch's host allocator. On the CPU: `host` itself.
at::Tensor Upload(const at::Tensor& host, c10::Device device);

}  // namespace atman::model
