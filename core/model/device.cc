#include "core/model/device.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::model {

int CudaDeviceCount() {
  if (!at::hasCUDA()) return 0;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount();
}

absl::StatusOr<c10::Device> ResolveDevice(c10::Device device) {
  if (!device.is_cuda()) return device;
  const int count = CudaDeviceCount();
  if (count == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", device.str(), "': this machine has no CUDA device"));
  }
  if (!device.has_index()) {
    return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice();
  }
  if (device.index() >= count) {
    return absl::InvalidArgumentError(absl::StrCat("device '", device.str(), "': this machine has ",
                                                   count, " CUDA device(s), cuda:0..cuda:",
                                                   count - 1));
  }
  return device;
}

std::optional<c10::Stream> PoolStream(c10::Device device) {
  if (device.is_cpu()) return std::nullopt;
  return c10::impl::getDeviceGuardImpl(device.type())->getStreamFromGlobalPool(device);
}

std::optional<c10::Stream> CurrentStream(c10::Device device) {
  if (device.is_cpu()) return std::nullopt;
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
}

DeviceEvent DeviceEvent::Record(c10::Device device) {
  DeviceEvent out;
  if (std::optional<c10::Stream> stream = CurrentStream(device)) {
    auto event = std::make_shared<c10::Event>(device.type());
    event->record(*stream);
    out.event_ = std::move(event);
  }
  return out;
}

void DeviceEvent::WaitOnCurrentStream() const {
  if (!event_) return;
  event_->block(*CurrentStream(event_->device()));
}

void DeviceEvent::Synchronize() const {
  if (event_) event_->synchronize();
}

at::TensorOptions HostStaging(c10::Device device, c10::ScalarType dtype) {
  return at::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda());
}

at::Tensor Upload(const at::Tensor& host, c10::Device device) {
  if (host.device() == device) return host;
  if (device.is_cpu() || !host.is_cpu()) return host.to(device, /*non_blocking=*/!device.is_cpu());
  const at::Tensor pinned = host.is_pinned() ? host : host.pin_memory();
  return pinned.to(device, /*non_blocking=*/true);
}

}  // namespace atman::model
