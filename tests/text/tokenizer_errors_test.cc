// Invalid input and malformed tokenizer.json files: errors that name the byte offset or the
// JSON field, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/text/tokenizer.h"
#include "tests/support/paths.h"

namespace atman::text {
namespace {

using ::atman::testing::FixtureDir;
using ::testing::HasSubstr;
using nlohmann::json;

json TrainedJson(const std::string& name) {
  std::ifstream in(FixtureDir("tokenizers") / "trained" / (name + ".json"));
  EXPECT_TRUE(in.good());
  return json::parse(in);
}

std::string ErrorOf(const json& j) {
  auto tok = Tokenizer::FromJson(j.dump());
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? "" : std::string(tok.status().message());
}

TEST(InvalidUtf8, EncodeNamesTheByteOffset) {
  auto tok = Tokenizer::FromJson(TrainedJson("bytelevel-gpt2").dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  struct Case {
    std::string text;
    std::string offset;
  };
  for (const Case& c : {Case{"ab\xFF", "offset 2"}, Case{"h\xC3", "offset 1"},
                        Case{"ok \xE2\x82x", "offset 3"}, Case{"\xED\xA0\x80", "offset 0"},
                        Case{"\xC0\xAF", "offset 0"}, Case{"xy\xF4\x90\x80\x80", "offset 2"}}) {
    auto enc = (*tok)->Encode(c.text);
    ASSERT_FALSE(enc.ok());
    EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(enc.status().message()), HasSubstr("invalid UTF-8"));
    EXPECT_THAT(std::string(enc.status().message()), HasSubstr(c.offset));
  }
}

TEST(Decode, UnknownIdIsAnErrorNamingIt) {
  auto tok = Tokenizer::FromJson(TrainedJson("sp-prepend").dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = (*tok)->Decode({1, 99999});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("id 99999 at position 1"));
}

TEST(MalformedJson, ErrorsNameTheField) {
  json j = TrainedJson("bytelevel-gpt2");
  j["model"]["merges"][12] = 7;
  EXPECT_THAT(ErrorOf(j), HasSubstr("model.merges[12]"));

  j = TrainedJson("bytelevel-gpt2");
  j["model"]["merges"][3] = "nosuchtoken Ġ";
  EXPECT_THAT(ErrorOf(j), HasSubstr("model.merges[3]: token 'nosuchtoken'"));

  j = TrainedJson("bytelevel-gpt2");
  j["model"].erase("vocab");
  EXPECT_THAT(ErrorOf(j), HasSubstr("model.vocab"));

  j = TrainedJson("bytelevel-gpt2");
  j["model"]["type"] = "Unigram";
  EXPECT_THAT(ErrorOf(j), HasSubstr("model.type"));

  j = TrainedJson("bytelevel-llama3");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  EXPECT_THAT(ErrorOf(j), HasSubstr("pre_tokenizer.pretokenizers[0].pattern.Regex"));

  j = TrainedJson("bytelevel-llama3");
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_THAT(ErrorOf(j), HasSubstr("pre_tokenizer.pretokenizers[0].behavior"));

  j = TrainedJson("bytelevel-falcon");
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_THAT(ErrorOf(j), HasSubstr("pre_tokenizer.pretokenizers[0].behavior: unknown"));

  j = TrainedJson("bytelevel-falcon");
  j["pre_tokenizer"]["pretokenizers"][2]["individual_digits"] = "yes";
  EXPECT_THAT(ErrorOf(j), HasSubstr("pre_tokenizer.pretokenizers[2].individual_digits"));

  j = TrainedJson("bert-pretokenizer");
  j["pre_tokenizer"]["pretokenizers"][0]["delimiter"] = "xy";
  EXPECT_THAT(ErrorOf(j),
              HasSubstr("pre_tokenizer.pretokenizers[0].delimiter: must be exactly one character"));

  j = TrainedJson("bert-pretokenizer");
  j["pre_tokenizer"]["pretokenizers"][0]["type"] = "UnicodeScripts";
  EXPECT_THAT(ErrorOf(j), HasSubstr("pre_tokenizer.pretokenizers[0].type: unsupported "
                                    "pre-tokenizer 'UnicodeScripts'"));

  j = TrainedJson("sp-prepend");
  j["normalizer"]["normalizers"][1]["type"] = "Frobnicate";
  EXPECT_THAT(ErrorOf(j), HasSubstr("normalizer.normalizers[1].type"));

  j = TrainedJson("sp-prepend");
  j["decoder"]["decoders"][3]["content"] = 5;
  EXPECT_THAT(ErrorOf(j), HasSubstr("decoder.decoders[3].content"));

  j = TrainedJson("sp-prepend");
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<nope>";
  EXPECT_THAT(ErrorOf(j), HasSubstr("post_processor.special_tokens"));

  j = TrainedJson("sp-prepend");
  j["added_tokens"][2].erase("content");
  EXPECT_THAT(ErrorOf(j), HasSubstr("added_tokens[2].content"));

  j = TrainedJson("sp-prepend");
  j["model"]["dropout"] = 0.1;
  EXPECT_THAT(ErrorOf(j), HasSubstr("model.dropout"));

  auto broken = Tokenizer::FromJson("{\"model\": ");
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("not valid JSON"));
}

// A minimal byte-free BPE tokenizer.json: vocabulary `vocab`, no merges, no pipeline.
json TinyBpe(const json& vocab) {
  return json{{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
}

// Found by tokenizer_json_fuzzer: ids were read with get<int32_t>() (a 64-bit id wrapped) and
// the id -> token table was a vector as long as the largest id, so one id near 2^31 made
// loading allocate tens of gigabytes.
TEST(TokenIds, OutOfRangeIdsAreErrorsNamingTheField) {
  for (const json& id : {json(2147483648ll), json(299999999999994ll), json(-1), json(1.5)}) {
    SCOPED_TRACE(id.dump());
    EXPECT_EQ(ErrorOf(TinyBpe({{"a", 0}, {"b", id}})),
              "tokenizer.json: model.vocab[\"b\"]: must be an integer id in [0, 2147483647]");
    json j = TinyBpe({{"a", 0}});
    j["added_tokens"] = json::array({{{"id", id}, {"content", "<x>"}}});
    EXPECT_EQ(ErrorOf(j),
              "tokenizer.json: added_tokens[0].id: must be an integer id in [0, 2147483647]");
  }
}

TEST(TokenIds, SparseIdsUpToTheLargestAreServedWithoutADenseTable) {
  auto tok = Tokenizer::FromJson(TinyBpe({{"a", 0}, {"b", 2147483647}}).dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 2u);
  auto enc = (*tok)->Encode("ba");
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->ids, (std::vector<int32_t>{2147483647, 0}));
  EXPECT_EQ((*tok)->IdToToken(2147483647), "b");
  // Ids between the two are in no token: unknown, as the library reports them.
  EXPECT_FALSE((*tok)->IdToToken(1).has_value());
  auto text = (*tok)->Decode({0, 1});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("id 1 at position 1"));
}

// Found by review with the fuzzer's findings: a non-numeric key of added_tokens_decoder went
// through std::stoi, whose exception escaped FromFolder().
TEST(TokenIds, NonNumericAddedTokensDecoderKeyIsAnError) {
  const auto dir = ::atman::testing::TempDir();
  auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
  };
  write("vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  write("merges.txt", "#version: 0.2\na b\n");
  write("tokenizer_config.json", R"({"added_tokens_decoder": {"x": {"content": "<x>"}}})");
  auto tok = Tokenizer::FromFolder(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(tok.status().message()),
            (dir / "tokenizer_config.json").string() +
                ": added_tokens_decoder[\"x\"]: the key must be an integer id in [0, 2147483647]");
  write("tokenizer_config.json", R"({"added_tokens_decoder": {"3": {"content": "<x>"}}})");
  tok = Tokenizer::FromFolder(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->TokenToId("<x>"), 3);
}

// tokenizer.json with n normalizers of type Sequence nested in each other, 2n + 2 levels deep
// (as text: nlohmann's own dump() overflows the stack on deep documents).
std::string NestedSequences(int n) {
  std::string normalizer;
  for (int i = 0; i < n; ++i) normalizer += R"({"type":"Sequence","normalizers":[)";
  normalizer += R"({"type":"NFC"})";
  for (int i = 0; i < n; ++i) normalizer += "]}";
  return R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"normalizer":)" + normalizer + "}";
}

// Found with hand-made deep inputs after fuzzing (the fuzzers' inputs are too short to nest
// that far): 50,000 nested Sequence normalizers exhausted the stack in the recursive pipeline
// parser, and 500,000 nested arrays in an error message's dump(). The `tokenizers` library
// (serde_json) refuses 128 levels and more; so do we, before parsing.
TEST(MalformedJson, NestingDeeperThan127LevelsIsRefusedLikeTheLibrary) {
  auto deepest_accepted = Tokenizer::FromJson(NestedSequences(62));  // 126 levels
  ASSERT_TRUE(deepest_accepted.ok()) << deepest_accepted.status();
  for (int n : {63, 50000}) {
    auto tok = Tokenizer::FromJson(NestedSequences(n));
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(std::string(tok.status().message()),
              "tokenizer.json: JSON nested deeper than 127 levels");
  }
  // Brackets inside strings are text, not nesting.
  auto in_string = Tokenizer::FromJson(TinyBpe({{std::string(1000, '['), 0}}).dump());
  ASSERT_TRUE(in_string.ok()) << in_string.status();
}

TEST(MalformedJson, FromFileNamesTheFile) {
  auto tok = Tokenizer::FromFile(::atman::testing::TempDir() / "absent" / "tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("absent/tokenizer.json"));
}

}  // namespace
}  // namespace atman::text
