// Decode and CLIP-preprocess time of atman::vision on one thread, for bench/vision_compare.py.
//
//   vision_bench <preprocessor_config.json> <patch_size> <repeats> <image>...
//
// Each image is decoded and preprocessed once as warm-up, then `repeats` times. Prints one
// JSON line per image: {"file", "width", "height", "decode_seconds", "preprocess_seconds"}
// (mean seconds per call).
#include <ATen/Parallel.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "core/vision/clip_image_processor.h"
#include "core/vision/decode.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: vision_bench <preprocessor_config.json> <patch_size> <repeats> "
                 "<image>...\n";
    return 2;
  }
  at::set_num_threads(1);
  auto processor =
      atman::vision::ClipImageProcessor::FromFile(argv[1], std::stoll(argv[2]));
  if (!processor.ok()) {
    std::cerr << processor.status() << "\n";
    return 1;
  }
  const int repeats = std::stoi(argv[3]);
  for (int i = 4; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string bytes = buffer.str();
    auto image = atman::vision::DecodeImage(bytes);
    if (!image.ok()) {
      std::cerr << argv[i] << ": " << image.status() << "\n";
      return 1;
    }
    if (auto warm = processor->Preprocess(*image); !warm.ok()) {
      std::cerr << argv[i] << ": " << warm.status() << "\n";
      return 1;
    }
    auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) {
      if (!atman::vision::DecodeImage(bytes).ok()) return 1;
    }
    const double decode = Seconds(start) / repeats;
    start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) {
      if (!processor->Preprocess(*image).ok()) return 1;
    }
    const double preprocess = Seconds(start) / repeats;
    std::cout << nlohmann::json{{"file", argv[i]},
                                {"width", image->width()},
                                {"height", image->height()},
                                {"decode_seconds", decode},
                                {"preprocess_seconds", preprocess}}
                     .dump()
              << "\n";
  }
  return 0;
}
