// engine_explain: the engine run directly, in process, for the service tests to compare the
// server's scores against.
//
//   engine_explain <model-folder> <requests.json>
//
// requests.json: [{"prompt": [{"text": ...} | {"token_ids": [...]}], "target": "...",
// "text_granularity": "token|word|sentence|paragraph|auto", "control_factor": f,
// "target_granularity": "complete|token"}, ...]
// Prints one JSON array: per request, the flat list of scores (explanations in order, each
// row's units in order), the explained target, the number of units, and the number of units
// of each row.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/atman/explainer.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/text/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <model-folder> <requests.json>\n", argv[0]);
    return 2;
  }
  auto lm = atman::model::CausalLM::Load(argv[1], c10::Device(c10::kCPU), c10::ScalarType::Float);
  auto tokenizer = atman::text::Tokenizer::FromFolder(argv[1]);
  auto requests = atman::io::ReadJsonFile(argv[2]);
  if (!lm.ok() || !tokenizer.ok() || !requests.ok()) {
    std::fprintf(stderr, "engine_explain: cannot load the model, tokenizer or requests\n");
    return 1;
  }
  atman::atman::Explainer explainer(lm->get(), tokenizer->get(), {});
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : *requests) {
    atman::atman::ExplainRequest request;
    for (const auto& item : r.at("prompt")) {
      if (item.contains("text")) {
        request.prompt.push_back(atman::atman::PromptItem::Text(item.at("text")));
      } else {
        request.prompt.push_back(atman::atman::PromptItem::Tokens(item.at("token_ids").get<std::vector<int32_t>>()));
      }
    }
    request.target = r.value("target", "");
    const std::string g = r.value("text_granularity", "auto");
    request.options.text_granularity = g == "token"       ? atman::atman::TextGranularity::kToken
                                       : g == "word"      ? atman::atman::TextGranularity::kWord
                                       : g == "sentence"  ? atman::atman::TextGranularity::kSentence
                                       : g == "paragraph" ? atman::atman::TextGranularity::kParagraph
                                                          : atman::atman::TextGranularity::kAuto;
    request.options.control_factor = r.value("control_factor", 0.1);
    if (r.value("target_granularity", "complete") == "token") {
      request.options.target_granularity = atman::atman::TargetGranularity::kToken;
    }
    auto e = explainer.Explain(request);
    if (!e.ok()) {
      std::fprintf(stderr, "engine_explain: %s\n", std::string(e.status().message()).c_str());
      return 1;
    }
    std::vector<double> scores;
    std::vector<size_t> row_units;
    for (const auto& t : e->explanations) {
      for (const auto& s : t.scores) scores.push_back(s.score);
      row_units.push_back(t.scores.size());
    }
    out.push_back({{"scores", scores},
                   {"target", e->target},
                   {"units", e->usage.perturbed_rows},
                   {"row_units", row_units}});
  }
  std::cout << out.dump() << "\n";
  return 0;
}
