// atman-explain: AtMan explanations from the command line. Loads one model folder once
// (atman::ServedModel: a LLaVA vision-language model when config.json says so, else a
// text-only causal LM), then
// reads one JSON request per line from stdin and writes one JSON line per request to stdout
// (flushed after each, so a caller can drive it through a pipe).
//
//   atman-explain --model DIR|FILE.gguf [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]
//                 [--max-rows N] [--max-tokens N] [--no-prefix-reuse] [--no-warmup]
//
// Request (fields other than "prompt" optional; unknown fields are an error):
//   {"id": <any>, "prompt": [{"text": "..."} | {"image_path": "a.png"} | {"tokens": [1, 2]}],
//    "target": " Paris", "options": {<ExplainOptions field>: value, ...}}
// options: text_granularity (token|word|sentence|paragraph|custom|auto), custom_delimiter,
//   auto_max_units, image_granularity (native|6x6|3x3|1|grid), image_rows, image_cols,
//   control_factor, mode (log_additive|multiplicative), contextual_control_threshold,
//   target_granularity (complete|token), postprocessing (none|absolute|square), normalize,
//   layers, scored_items, add_special_tokens, max_new_tokens. Defaults are ExplainOptions' (docs/engine.md).
//
// Answer: {"id", "target", "target_ids", "target_log_probs", "prompt_tokens", "explanations": [{"target_start",
//   "target_length", "units": [{"kind": "text"|"image"|"token"|"target", "item", "start",
//   "length", "rect": [left, top, width, height] (image units), "score"}]}],
//   "unit_relevance": [[...]] (target token x unit, before postprocessing), "usage": {...}}
// or {"id", "error": "<message>", "code": "<absl status code>"} for a request that fails; the
// tool then goes on with the next line. Bad command-line arguments: usage on stderr, exit 2;
// a model that does not load: exit 1.
#include <ATen/core/Tensor.h>
#include <ATen/ops/to.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/atman/explainer.h"
#include "core/atman/relevance.h"
#include "core/base/status_macros.h"
#include "core/atman/served_model.h"

namespace atman {
namespace {

using atman::ExplainOptions;
using atman::ExplainRequest;
using atman::ImageGranularity;
using atman::PromptItem;
using atman::TextGranularity;
using atman::UnitScore;

constexpr char kUsage[] =
    "usage: atman-explain --model DIR|FILE.gguf [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]\n"
    "                     [--max-rows N] [--max-tokens N] [--no-prefix-reuse] [--no-warmup]\n"
    "Reads JSON-lines requests on stdin, writes one JSON line per explanation on stdout\n"
    "(see docs/engine.md, \"atman-explain\").\n";

struct Args {
  std::string model;
  std::string device = "cpu";
  std::string dtype = "float32";
  int64_t max_rows = 32;
  int64_t max_tokens = 16384;
  bool reuse_prefix = true;
  bool warmup = true;
};

std::optional<int64_t> ParsePositive(const char* s) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v <= 0) return std::nullopt;
  return v;
}

// nullopt (after printing why) on bad arguments.
std::optional<Args> ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) return nullptr;
      return argv[++i];
    };
    if (flag == "--no-prefix-reuse") {
      args.reuse_prefix = false;
      continue;
    }
    if (flag == "--no-warmup") {
      args.warmup = false;
      continue;
    }
    if (flag == "-h" || flag == "--help") return std::nullopt;
    const char* v = value();
    if (v == nullptr) {
      std::fprintf(stderr, "atman-explain: %s needs a value\n", flag.c_str());
      return std::nullopt;
    }
    if (flag == "--model") {
      args.model = v;
    } else if (flag == "--device") {
      args.device = v;
    } else if (flag == "--dtype") {
      args.dtype = v;
    } else if (flag == "--max-rows" || flag == "--max-tokens") {
      const auto n = ParsePositive(v);
      if (!n) {
        std::fprintf(stderr, "atman-explain: %s takes a positive integer, got '%s'\n", flag.c_str(),
                     v);
        return std::nullopt;
      }
      (flag == "--max-rows" ? args.max_rows : args.max_tokens) = *n;
    } else {
      std::fprintf(stderr, "atman-explain: unknown argument '%s'\n", flag.c_str());
      return std::nullopt;
    }
  }
  if (args.model.empty()) {
    std::fprintf(stderr, "atman-explain: --model is required\n");
    return std::nullopt;
  }
  if (args.dtype != "float32" && args.dtype != "bfloat16" && args.dtype != "float16") {
    std::fprintf(stderr, "atman-explain: --dtype must be float32, bfloat16 or float16, got '%s'\n",
                 args.dtype.c_str());
    return std::nullopt;
  }
  return args;
}

// The model on --device in --dtype, with its Explainer (core/atman/served_model.h).
absl::StatusOr<std::unique_ptr<atman::ServedModel>> LoadModel(const Args& args,
                                                              atman::Explainer::Options options) {
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<atman::ServedModel> served,
                         atman::ServedModel::Open(args.model, std::move(options)));
  auto device = atman::ServedModel::ParseDevice(args.device);
  if (!device.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--device: ", device.status().message()));
  }
  ATMAN_RETURN_IF_ERROR(served->AddDevice(*device, args.dtype));
  return served;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("image_path '", path, "' cannot be read"));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The value of options[key] as T, or a status naming the field.
template <typename T>
absl::StatusOr<T> Field(const nlohmann::json& object, const std::string& key,
                        const std::string& where) {
  try {
    return object.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, key, ": ", e.what()));
  }
}

template <typename E>
using NameTable = std::vector<std::pair<std::string_view, E>>;

const NameTable<TextGranularity> kTextGranularities = {
    {"token", TextGranularity::kToken},       {"word", TextGranularity::kWord},
    {"sentence", TextGranularity::kSentence}, {"paragraph", TextGranularity::kParagraph},
    {"custom", TextGranularity::kCustom},     {"auto", TextGranularity::kAuto}};
const NameTable<ImageGranularity> kImageGranularities = {{"native", ImageGranularity::kNative},
                                                         {"6x6", ImageGranularity::kTiles6x6},
                                                         {"3x3", ImageGranularity::kTiles3x3},
                                                         {"1", ImageGranularity::kWhole},
                                                         {"grid", ImageGranularity::kGrid}};

// The enum value named `name`, or INVALID_ARGUMENT naming options.<field> and the choices.
template <typename E>
absl::StatusOr<E> Lookup(const NameTable<E>& table, const std::string& name,
                         const std::string& field) {
  std::vector<std::string> names;
  for (const auto& [n, value] : table) {
    if (n == name) return value;
    names.emplace_back(n);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("options.", field, ": '", name, "' is not one of ", absl::StrJoin(names, ", ")));
}

absl::Status ParseOptions(const nlohmann::json& o, ExplainOptions* opt) {
  if (!o.is_object()) return absl::InvalidArgumentError("options: must be an object");
  const std::string at = "options.";
  for (const auto& [key, value] : o.items()) {
    if (key == "text_granularity") {
      ATMAN_ASSIGN_OR_RETURN(const std::string g, Field<std::string>(o, key, at));
      ATMAN_ASSIGN_OR_RETURN(opt->text_granularity, Lookup(kTextGranularities, g, key));
    } else if (key == "custom_delimiter") {
      ATMAN_ASSIGN_OR_RETURN(opt->custom_delimiter, Field<std::string>(o, key, at));
    } else if (key == "auto_max_units") {
      ATMAN_ASSIGN_OR_RETURN(opt->auto_max_units, Field<int32_t>(o, key, at));
    } else if (key == "image_granularity") {
      ATMAN_ASSIGN_OR_RETURN(const std::string g, Field<std::string>(o, key, at));
      ATMAN_ASSIGN_OR_RETURN(opt->image_granularity, Lookup(kImageGranularities, g, key));
    } else if (key == "image_rows") {
      ATMAN_ASSIGN_OR_RETURN(opt->image_rows, Field<int32_t>(o, key, at));
    } else if (key == "image_cols") {
      ATMAN_ASSIGN_OR_RETURN(opt->image_cols, Field<int32_t>(o, key, at));
    } else if (key == "control_factor") {
      ATMAN_ASSIGN_OR_RETURN(opt->control_factor, Field<double>(o, key, at));
    } else if (key == "mode") {
      ATMAN_ASSIGN_OR_RETURN(const std::string m, Field<std::string>(o, key, at));
      ATMAN_ASSIGN_OR_RETURN(opt->mode, model::ParseControlMode(m));
    } else if (key == "contextual_control_threshold") {
      if (!value.is_null()) {
        ATMAN_ASSIGN_OR_RETURN(opt->contextual_control_threshold, Field<double>(o, key, at));
      }
    } else if (key == "target_granularity") {
      ATMAN_ASSIGN_OR_RETURN(const std::string g, Field<std::string>(o, key, at));
      ATMAN_ASSIGN_OR_RETURN(opt->target_granularity, atman::ParseTargetGranularity(g));
    } else if (key == "postprocessing") {
      ATMAN_ASSIGN_OR_RETURN(const std::string p, Field<std::string>(o, key, at));
      ATMAN_ASSIGN_OR_RETURN(opt->postprocessing, atman::ParsePostprocessing(p));
    } else if (key == "normalize") {
      ATMAN_ASSIGN_OR_RETURN(opt->normalize, Field<bool>(o, key, at));
    } else if (key == "layers") {
      ATMAN_ASSIGN_OR_RETURN(opt->layers, Field<std::vector<int64_t>>(o, key, at));
    } else if (key == "scored_items") {
      ATMAN_ASSIGN_OR_RETURN(opt->scored_items, Field<std::vector<int32_t>>(o, key, at));
    } else if (key == "add_special_tokens") {
      ATMAN_ASSIGN_OR_RETURN(opt->add_special_tokens, Field<bool>(o, key, at));
    } else if (key == "max_new_tokens") {
      ATMAN_ASSIGN_OR_RETURN(opt->max_new_tokens, Field<int32_t>(o, key, at));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("options: unknown field '", key, "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ExplainRequest> ParseRequest(const nlohmann::json& r) {
  if (!r.is_object()) return absl::InvalidArgumentError("request: must be a JSON object");
  for (const auto& [key, value] : r.items()) {
    if (key != "id" && key != "prompt" && key != "target" && key != "options") {
      return absl::InvalidArgumentError(absl::StrCat("request: unknown field '", key, "'"));
    }
  }
  if (!r.contains("prompt") || !r.at("prompt").is_array()) {
    return absl::InvalidArgumentError("prompt: must be an array of items");
  }
  ExplainRequest request;
  const auto& prompt = r.at("prompt");
  for (size_t i = 0; i < prompt.size(); ++i) {
    const auto& item = prompt[i];
    const std::string where = absl::StrCat("prompt[", i, "].");
    if (!item.is_object() || item.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt[", i, "]: must be an object with exactly one of text, image_path, tokens"));
    }
    if (item.contains("text")) {
      ATMAN_ASSIGN_OR_RETURN(std::string text, Field<std::string>(item, "text", where));
      request.prompt.push_back(PromptItem::Text(std::move(text)));
    } else if (item.contains("image_path")) {
      ATMAN_ASSIGN_OR_RETURN(const std::string path, Field<std::string>(item, "image_path", where));
      ATMAN_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
      request.prompt.push_back(PromptItem::Image(std::move(bytes)));
    } else if (item.contains("tokens")) {
      ATMAN_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                             Field<std::vector<int32_t>>(item, "tokens", where));
      request.prompt.push_back(PromptItem::Tokens(std::move(ids)));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt[", i, "]: unknown item field '", item.begin().key(), "'"));
    }
  }
  if (r.contains("target")) {
    ATMAN_ASSIGN_OR_RETURN(request.target, Field<std::string>(r, "target", "request."));
  }
  if (r.contains("options")) ATMAN_RETURN_IF_ERROR(ParseOptions(r.at("options"), &request.options));
  return request;
}

const char* KindName(UnitScore::Kind kind) {
  switch (kind) {
    case UnitScore::Kind::kText:
      return "text";
    case UnitScore::Kind::kImage:
      return "image";
    case UnitScore::Kind::kToken:
      return "token";
    case UnitScore::Kind::kTarget:
      return "target";
  }
  return "unknown";
}

nlohmann::json ToJson(const atman::Explanation& e, double seconds) {
  nlohmann::json out;
  out["target"] = e.target;
  out["target_ids"] = e.target_ids;
  out["target_log_probs"] = e.target_log_probs;
  out["prompt_tokens"] = e.prompt_tokens;
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : e.explanations) {
    nlohmann::json units = nlohmann::json::array();
    for (const UnitScore& s : row.scores) {
      nlohmann::json u = {{"kind", KindName(s.kind)}, {"item", s.item}, {"score", s.score}};
      if (s.kind == UnitScore::Kind::kImage) {
        u["rect"] = {s.left, s.top, s.width, s.height};
      } else {
        u["start"] = s.start;
        u["length"] = s.length;
      }
      units.push_back(std::move(u));
    }
    rows.push_back({{"target_start", row.target_start},
                    {"target_length", row.target_length},
                    {"units", std::move(units)}});
  }
  out["explanations"] = std::move(rows);
  nlohmann::json relevance = nlohmann::json::array();
  const at::Tensor r = e.unit_relevance.to(at::kDouble).contiguous();
  for (int64_t j = 0; j < r.size(0); ++j) {
    const double* p = r[j].data_ptr<double>();
    relevance.push_back(std::vector<double>(p, p + r.size(1)));
  }
  out["unit_relevance"] = std::move(relevance);
  const atman::Usage& u = e.usage;
  out["usage"] = {
      {"forward_passes", u.forward_passes},         {"perturbed_rows", u.perturbed_rows},
      {"positions_computed", u.positions_computed}, {"peak_memory_bytes", u.peak_memory_bytes},
      {"prepare_seconds", u.prepare_seconds},       {"perturbed_seconds", u.perturbed_seconds},
      {"score_seconds", u.score_seconds},           {"seconds", seconds}};
  return out;
}

int Run(const Args& args) {
  atman::Explainer::Options options;
  options.limits.max_rows = args.max_rows;
  options.limits.max_tokens = args.max_tokens;
  options.limits.reuse_prefix = args.reuse_prefix;
  auto loaded = LoadModel(args, options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "atman-explain: cannot load --model %s: %s\n", args.model.c_str(),
                 std::string(loaded.status().message()).c_str());
    return 1;
  }
  atman::Explainer* explainer = (*loaded)->replica(0).explainer.get();
  if (args.warmup) {
    if (absl::Status s = explainer->Warmup(); !s.ok()) {
      std::fprintf(stderr, "atman-explain: warm-up failed: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }

  std::string line;
  int64_t line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json out;
    const auto request_json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (request_json.is_discarded()) {
      out = {{"error", absl::StrCat("line ", line_number, ": not valid JSON")},
             {"code", "INVALID_ARGUMENT"}};
    } else {
      const auto started = std::chrono::steady_clock::now();
      absl::StatusOr<atman::Explanation> explanation = absl::UnknownError("not run");
      auto request = ParseRequest(request_json);
      if (request.ok()) {
        explanation = explainer->Explain(*request);
      } else {
        explanation = request.status();
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      if (explanation.ok()) {
        out = ToJson(*explanation, seconds);
      } else {
        out = {{"error", std::string(explanation.status().message())},
               {"code", absl::StatusCodeToString(explanation.status().code())}};
      }
      if (request_json.is_object() && request_json.contains("id")) out["id"] = request_json["id"];
    }
    std::cout << out.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace)
              << "\n"
              << std::flush;
  }
  return 0;
}

}  // namespace
}  // namespace atman

int main(int argc, char** argv) {
  const auto args = atman::ParseArgs(argc, argv);
  if (!args) {
    std::fputs(atman::kUsage, stderr);
    return 2;
  }
  return atman::Run(*args);
}
