// Encode throughput of atman::text::Tokenizer on one thread, for bench/tokenizer_compare.py.
//
//   tokenizer_bench <tokenizer.json> <texts.json> <repeats>
//
// texts.json is a JSON array of strings; every text is encoded (with special tokens) once per
// repeat after one warm-up pass. Prints one JSON line: {"seconds", "texts", "bytes", "tokens"}.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/text/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: tokenizer_bench <tokenizer.json> <texts.json> <repeats>\n";
    return 2;
  }
  auto tok = atman::text::Tokenizer::FromFile(argv[1]);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  std::ifstream in(argv[2]);
  const auto texts = nlohmann::json::parse(in).get<std::vector<std::string>>();
  const int repeats = std::stoi(argv[3]);
  size_t tokens = 0, bytes = 0;
  for (const std::string& t : texts) {  // warm-up, and the token count
    auto enc = (*tok)->Encode(t);
    if (!enc.ok()) {
      std::cerr << enc.status() << "\n";
      return 1;
    }
    tokens += enc->size();
    bytes += t.size();
  }
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) {
    for (const std::string& t : texts) {
      auto enc = (*tok)->Encode(t);
      if (!enc.ok()) return 1;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << nlohmann::json{{"seconds", seconds},
                              {"texts", texts.size() * static_cast<size_t>(repeats)},
                              {"bytes", bytes * static_cast<size_t>(repeats)},
                              {"tokens", tokens * static_cast<size_t>(repeats)}}
                   .dump()
            << "\n";
  return 0;
}
