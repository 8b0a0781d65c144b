// atman-inspect: loads a checkpoint folder with core/io and prints its config summary and
// tensor table. Until the service exists, scripts/run.sh runs this on the default model.
//
//   atman-inspect <checkpoint-folder>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_join.h"
#include "core/io/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <checkpoint-folder>\n", argv[0]);
    return 2;
  }
  auto checkpoint = atman::io::Checkpoint::Open(argv[1]);
  if (!checkpoint.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(checkpoint.status().message()).c_str());
    return 1;
  }
  const auto& config = (*checkpoint)->config();
  std::cout << "checkpoint: " << (*checkpoint)->dir().string() << "\n"
            << "model_type: " << config.value("model_type", std::string("?")) << "\n";
  uint64_t total_bytes = 0, total_params = 0;
  for (const auto& name : (*checkpoint)->TensorNames()) {
    const auto* entry = *(*checkpoint)->Entry(name);
    uint64_t numel = 1;
    for (int64_t d : entry->shape) numel *= static_cast<uint64_t>(d);
    total_params += numel;
    total_bytes += entry->end - entry->begin;
    std::cout << "  " << name << "  " << entry->dtype_name << " [" << absl::StrJoin(entry->shape, ", ")
              << "]\n";
  }
  std::cout << (*checkpoint)->TensorNames().size() << " tensors, " << total_params << " parameters, "
            << total_bytes << " bytes\n";
  return 0;
}
