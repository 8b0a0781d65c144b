// The service's edge without a server: request bytes -> messages (invalid UTF-8 named by its
// field path), request ids, proto -> engine requests, and log lines that no client input can
// break.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "proto/status_code_name.h"
#include "server/call_log.h"
#include "server/service.h"
#include "server/proto_conversion.h"

namespace atman::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Varint(uint64_t n) {
  std::string out;
  do {
    uint8_t b = n & 0x7F;
    n >>= 7;
    out += static_cast<char>(b | (n ? 0x80 : 0));
  } while (n);
  return out;
}

// A length-delimited field.
std::string Ld(int field, const std::string& payload) {
  return Varint(static_cast<uint64_t>(field) << 3 | 2) + Varint(payload.size()) + payload;
}

std::string Message(absl::Status s) { return std::string(s.message()); }

TEST(ParseRequest, AValidMessageParses) {
  pb::ExplainRequest in;
  in.add_prompt()->set_text("Tom lives in Rome.");
  in.set_target(" Rome");
  pb::ExplainRequest out;
  ASSERT_TRUE(ParseRequest(in.SerializeAsString(), &out).ok());
  EXPECT_EQ(out.prompt(0).text(), "Tom lives in Rome.");
}

TEST(ParseRequest, InvalidUtf8IsNamedByItsFieldPathAndOffset) {
  pb::ExplainRequest out;
  const std::string text = Ld(1, Ld(1, "ok")) + Ld(1, Ld(1, std::string("ab\xff", 3)));
  absl::Status s = ParseRequest(text, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(s), StartsWith("prompt[1].text: invalid UTF-8 at byte offset 2"));
  s = ParseRequest(Ld(3, Ld(2, std::string("\xc0\x80", 2))), &out);
  EXPECT_THAT(Message(s), StartsWith("options.custom_delimiter: invalid UTF-8 at byte offset 0"));
  pb::GenerateRequest generate;
  s = ParseRequest(Ld(13, std::string("\xed\xa0\x80", 3)), &generate);  // a surrogate
  EXPECT_THAT(Message(s), StartsWith("request_id: invalid UTF-8"));
  // bytes fields may hold anything
  EXPECT_TRUE(ParseRequest(Ld(1, Ld(2, std::string("\xff\xfe", 2))), &out).ok());
}

TEST(ParseRequest, GarbageIsNotAMessageOfTheType) {
  pb::ExplainRequest out;
  for (const std::string& bytes : {std::string("\xff\xff\xff\xff", 4), std::string("\x0a\x64x", 3),
                                   std::string("\x08\x80", 2)}) {
    const absl::Status s = ParseRequest(bytes, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(s), StartsWith(absl::StrCat("request: the ", bytes.size(),
                                                    " bytes received are not a valid "
                                                    "atman.v1.ExplainRequest message")));
  }
}

TEST(CheckRequestId, SafeCharactersOnlyAndAtMost128Bytes) {
  EXPECT_TRUE(CheckRequestId("").ok());
  EXPECT_TRUE(CheckRequestId("tenant-7/job_42:attempt=1+retry@eu.west").ok());
  EXPECT_TRUE(CheckRequestId(std::string(128, 'a')).ok());
  EXPECT_THAT(Message(CheckRequestId(std::string(129, 'a'))),
              StartsWith("request_id: 129 bytes, more than the limit of 128"));
  EXPECT_THAT(Message(CheckRequestId("abc\ndef")), StartsWith("request_id: byte 3 (0x0a)"));
  EXPECT_THAT(Message(CheckRequestId(std::string("a\0", 2))),
              StartsWith("request_id: byte 1 (0x00)"));
  EXPECT_THAT(Message(CheckRequestId("a b")), StartsWith("request_id: byte 1 (0x20)"));
}

TEST(ToRequests, UnknownEnumValuesAreNamed) {
  pb::ExplainRequest e;
  e.add_prompt()->set_text("x");
  e.mutable_options()->set_control_mode(static_cast<pb::ControlMode>(9));
  EXPECT_THAT(Message(ToExplainRequest(e).status()),
              StartsWith("options.control_mode: unknown value 9"));
  pb::GenerateRequest g;
  g.add_prompt()->set_text("x");
  g.set_control_token_overlap(static_cast<pb::ControlTokenOverlap>(7));
  EXPECT_THAT(Message(ToGenerationRequest(g).status()),
              StartsWith("control_token_overlap: unknown value 7"));
  g.set_control_token_overlap(pb::CONTROL_TOKEN_OVERLAP_COMPLETE);
  g.set_control_mode(static_cast<pb::ControlMode>(-3));
  EXPECT_THAT(Message(ToGenerationRequest(g).status()),
              StartsWith("control_mode: unknown value -3"));
}

TEST(ToRequests, ControlRangesAreWidenedToInt64) {
  pb::GenerateRequest g;
  g.add_prompt()->set_text("x");
  auto* c = g.add_controls();
  c->set_item(0);
  c->set_start(2147483647);
  c->set_length(2147483647);
  c->set_factor(0.5);
  auto r = ToGenerationRequest(g);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->controls[0].start + r->controls[0].length, int64_t{4294967294});
  EXPECT_EQ(r->max_new_tokens, 16);  // the documented default
  EXPECT_TRUE(r->stop_at_eos);
  EXPECT_TRUE(r->partial_overlap);
}

// TOKEN granularity: explanation j carries target_token_index j and, as target units, exactly
// the engine row's earlier target tokens 0 .. j-1 (later ones are no units of j); COMPLETE
// leaves the index unset.
TEST(ToExplainResponse, TokenRowsCarryTheirIndexAndOnlyEarlierTargetTokens) {
  atman::Explanation e;
  e.target = " a b c";
  e.target_ids = {7, 8, 9};
  for (int32_t j = 0; j < 3; ++j) {
    atman::TargetExplanation row;
    row.target_start = 2 * j;
    row.target_length = 2;
    row.target_token = j;
    atman::UnitScore prompt_unit;
    prompt_unit.item = 0;
    prompt_unit.start = 0;
    prompt_unit.length = 3;
    prompt_unit.score = 1.0 + j;
    row.scores.push_back(prompt_unit);
    for (int32_t i = 0; i < j; ++i) {
      atman::UnitScore earlier;
      earlier.kind = atman::UnitScore::Kind::kTarget;
      earlier.item = -1;
      earlier.start = 2 * i;
      earlier.length = 2;
      earlier.target_token = i;
      earlier.score = 10.0 * j + i;
      row.scores.push_back(earlier);
    }
    e.explanations.push_back(row);
  }
  pb::ExplainResponse out;
  ToExplainResponse(e, 1, false, &out);
  ASSERT_EQ(out.explanations_size(), 3);
  for (int j = 0; j < 3; ++j) {
    const pb::TargetExplanation& t = out.explanations(j);
    ASSERT_TRUE(t.has_target_token_index());
    EXPECT_EQ(t.target_token_index(), j);
    ASSERT_EQ(t.items_size(), 1);
    EXPECT_EQ(t.items(0).text(0).score(), 1.0 + j);
    ASSERT_EQ(t.target_size(), j);
    for (int i = 0; i < j; ++i) {
      EXPECT_EQ(t.target(i).start(), 2 * i);
      EXPECT_EQ(t.target(i).score(), 10.0 * j + i);
    }
  }

  e.explanations.resize(1);
  e.explanations[0].target_token = -1;  // COMPLETE
  e.explanations[0].target_length = 6;
  pb::ExplainResponse complete;
  ToExplainResponse(e, 1, false, &complete);
  EXPECT_FALSE(complete.explanations(0).has_target_token_index());
  EXPECT_EQ(complete.explanations(0).target_size(), 0);
}

TEST(StatusCodeName, OneTableForServerAndClient) {
  EXPECT_EQ(proto::StatusCodeName(0), "OK");
  EXPECT_EQ(proto::StatusCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(proto::StatusCodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(proto::StatusCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(proto::StatusCodeName(17), "CODE_17");
  EXPECT_EQ(proto::StatusCodeName(-1), "CODE_-1");
  // The server's log lines and metrics labels use it.
  EXPECT_EQ(CodeName(grpc::StatusCode::DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  EXPECT_EQ(CodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
}

TEST(EscapeForLog, ControlCharactersAndInvalidUtf8CannotBreakALine) {
  EXPECT_EQ(EscapeForLog("plain id-1"), "plain id-1");
  EXPECT_EQ(EscapeForLog("a\nb\rc\td"), "a\\nb\\rc\\td");
  EXPECT_EQ(EscapeForLog(std::string("\x1b[31m\x7f\0", 7)), "\\x1b[31m\\x7f\\x00");
  EXPECT_EQ(EscapeForLog("say \"hi\" \\ bye"), "say \\\"hi\\\" \\\\ bye");
  EXPECT_EQ(EscapeForLog("caf\xc3\xa9 \xe2\x82\xac"),
            "caf\xc3\xa9 \xe2\x82\xac");  // valid UTF-8 kept
  EXPECT_EQ(EscapeForLog("\xff\xc3 \xed\xa0\x80"), "\\xff\\xc3 \\xed\\xa0\\x80");
}

TEST(FormatCallLine, OneLineWhateverTheFieldsHold) {
  CallRecord call{"Explain", "id\nrequest FORGED",      "ipv4:127.0.0.1:5", "INVALID_ARGUMENT",
                  0.25,      std::string("bad \xff\n"), "units=3"};
  const std::string text = FormatCallLine(call, /*json=*/false);
  EXPECT_EQ(text.find('\n'), std::string::npos);
  EXPECT_EQ(text,
            "request id\\nrequest FORGED Explain INVALID_ARGUMENT 0.2500s peer=ipv4:127.0.0.1:5 "
            "units=3 error=\"bad \\xff\\n\"");
  const std::string json = FormatCallLine(call, /*json=*/true);
  EXPECT_EQ(json.find('\n'), std::string::npos);
  const auto parsed = nlohmann::json::parse(json);  // valid JSON although a field was not UTF-8
  EXPECT_EQ(parsed["request_id"], "id\nrequest FORGED");
  EXPECT_EQ(parsed["error"], "bad \xef\xbf\xbd\n");  // U+FFFD
  EXPECT_EQ(parsed["code"], "INVALID_ARGUMENT");
}

}  // namespace
}  // namespace atman::server
