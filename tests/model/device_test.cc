// The device plumbing as the CPU sees it (core/model/device.h): "cuda" refused with a clear
// error where there is no CUDA device, streams and events as no-ops, uploads as the tensor
// itself; and the attention changes the GPU path brought: the mask stays one [1, 1, T, S]
// without padding, and the multiplicative path's explicit scores computed in chunks of queries
// equal one chunk. The same code on a real GPU: tests/gpu.
#include "core/model/device.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/ones.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/model/attention.h"
#include "tests/model/model_cases.h"

namespace atman::model {
namespace {

using ::testing::HasSubstr;
using testing::ControlFromCase;
using testing::LoadModel;
using testing::MaxAbsDiff;
using testing::ReadCases;
using testing::TensorNamed;

TEST(Devices, TheCpuResolvesToItself) {
  EXPECT_EQ(ResolveDevice(c10::Device(c10::kCPU)).value(), c10::Device(c10::kCPU));
}

TEST(Devices, CudaWithoutACudaDeviceIsAClearError) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "this machine has CUDA (tests/gpu covers it)";
  for (const char* name : {"cuda", "cuda:0", "cuda:3"}) {
    auto device = ResolveDevice(c10::Device(name));
    ASSERT_FALSE(device.ok()) << name;
    EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(device.status().message()),
                HasSubstr(std::string("device '") + name + "': this machine has no CUDA device"));
  }
  auto lm = CausalLM::Load(ReadCases("llama").dir, c10::Device("cuda"), at::kFloat);
  ASSERT_FALSE(lm.ok());
  EXPECT_THAT(std::string(lm.status().message()), HasSubstr("no CUDA device"));
}

TEST(Devices, StreamsEventsAndUploadsAreNoOpsOnTheCpu) {
  const c10::Device cpu(c10::kCPU);
  EXPECT_FALSE(PoolStream(cpu).has_value());
  EXPECT_FALSE(CurrentStream(cpu).has_value());
  const DeviceEvent event = DeviceEvent::Record(cpu);
  event.WaitOnCurrentStream();
  event.Synchronize();
  const at::Tensor host = at::arange(6, HostStaging(cpu, at::kLong));
  EXPECT_FALSE(host.is_pinned());
  const at::Tensor up = Upload(host, cpu);
  EXPECT_TRUE(up.is_same(host));  // no copy on the CPU
}

TEST(AttentionMask, WithoutPaddingOneMaskServesEveryRow) {
  const c10::Device cpu(c10::kCPU);
  AttentionMask plain = BuildAttentionMask(/*batch=*/8, /*first=*/3, /*num_queries=*/5, {}, 0, cpu, at::kFloat);
  EXPECT_EQ(plain.visible.sizes(), (std::vector<int64_t>{1, 1, 5, 8}));
  EXPECT_EQ(plain.bias.sizes(), (std::vector<int64_t>{1, 1, 5, 8}));
  const at::Tensor padding = at::ones({8, 8}, at::kBool);
  AttentionMask padded = BuildAttentionMask(8, 3, 5, padding, 0, cpu, at::kFloat);
  EXPECT_EQ(padded.visible.sizes(), (std::vector<int64_t>{8, 1, 5, 8}));
  EXPECT_TRUE(at::equal(padded.visible, plain.visible.expand({8, 1, 5, 8})));
}

TEST(AttentionMask, LogAdditiveControlFoldsIntoTheMaskPerRow) {
  const c10::Device cpu(c10::kCPU);
  AttentionMask plain = BuildAttentionMask(2, 0, 4, {}, 0, cpu, at::kFloat);
  AttentionControl control;
  control.rows = {{{1, 0.0}}, {{2, 0.5}}};
  auto tensors = BuildControlTensors(control, 2, 4, 1, cpu, at::kFloat);
  ASSERT_TRUE(tensors.ok());
  AttentionMask folded = WithControl(plain, *tensors);
  ASSERT_EQ(folded.bias.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  // Row 0: key 1 removed (-inf) for every query that sees it; row 1: log 0.5 on key 2.
  EXPECT_TRUE(std::isinf(folded.bias[0][0][3][1].item<float>()));
  EXPECT_FLOAT_EQ(folded.bias[1][0][3][2].item<float>(), std::log(0.5f));
  EXPECT_FLOAT_EQ(folded.bias[1][0][3][0].item<float>(), 0.0f);
  EXPECT_TRUE(std::isinf(folded.bias[1][0][0][1].item<float>()));  // causal mask kept
  // Query 1 of row 0 sees keys 0 and 1; key 1 is removed, key 0 is not: alive. Multiplicative
  // controls leave the mask alone.
  EXPECT_FALSE(folded.dead[0][0][1][0].item<bool>());
  control.mode = ControlMode::kMultiplicative;
  auto mul = BuildControlTensors(control, 2, 4, 1, cpu, at::kFloat);
  ASSERT_TRUE(mul.ok());
  EXPECT_TRUE(WithControl(plain, *mul).bias.is_same(plain.bias));
}

class ChunkedScores : public ::testing::TestWithParam<std::string> {};

TEST_P(ChunkedScores, MultiplicativeScoresInChunksOfQueriesEqualOneChunk) {
  const auto cases = ReadCases(GetParam());
  auto model = LoadModel(cases.dir);
  ASSERT_TRUE(model);
  int checked = 0;
  for (const auto& c : cases.cases) {
    if (c.at("inputs") != "padded" || !c.contains("mode") || c.at("mode") != "multiplicative") continue;
    AttentionControl control = ControlFromCase(c);
    auto run = [&](int64_t max_score_bytes) {
      auto embeds = model->Embed(TensorNamed(cases.tensors, "padded.ids"));
      EXPECT_TRUE(embeds.ok());
      ForwardInput in;
      in.embeds = *embeds;
      in.key_padding = TensorNamed(cases.tensors, "padded.mask");
      in.positions = TensorNamed(cases.tensors, "padded.positions");
      in.control = &control;
      in.max_score_bytes = max_score_bytes;
      in.output.kind = OutputRequest::Kind::kAllLogits;
      auto out = model->Forward(in);
      EXPECT_TRUE(out.ok()) << out.status();
      return out.ok() ? out->logits : at::Tensor();
    };
    const at::Tensor whole = run(0), per_query = run(1), few = run(4096);
    EXPECT_LT(MaxAbsDiff(per_query, whole), 1e-5) << c.at("name");
    EXPECT_LT(MaxAbsDiff(few, whole), 1e-5) << c.at("name");
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

INSTANTIATE_TEST_SUITE_P(Families, ChunkedScores, ::testing::Values("llama", "mistral", "gpt2"));

}  // namespace
}  // namespace atman::model
