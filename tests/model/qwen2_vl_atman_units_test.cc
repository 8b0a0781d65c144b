// The C++ Qwen2-VL geometry and image units (core/model/qwen2_vl_units.h) against the plain
// Python AtMan reference (tests/oracle/make_qwen2_vl_atman_cases.py, whose atman_reference.py
// implements the unit rule on its own): for every case of both families, each image item's
// merged-token grid (the C++ processor's geometry of the image file vs the grid transformers'
// processor gave the reference) and every image unit's positions (vision_start at the item's
// first position) and rectangle are the same. The two implementations are pinned together
// before the engine explains Qwen2-VL prompts.
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/model/qwen2_vl_units.h"
#include "core/vision/decode.h"
#include "core/vision/qwen2_vl_image_processor.h"
#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

struct UnitMembers {
  int64_t item = 0;
  std::vector<int64_t> positions;
  std::vector<double> rect;  // x, y, w, h
};

absl::StatusOr<std::vector<ImageRegionUnit>> UnitsFor(const Qwen2VlTokenGrid& grid,
                                                      const nlohmann::json& options) {
  const std::string granularity = options.value("image_granularity", std::string("native"));
  if (granularity == "native") return Qwen2VlNativeUnits(grid);
  if (granularity == "6x6") return Qwen2VlPresetUnits(grid, 6);
  if (granularity == "3x3") return Qwen2VlPresetUnits(grid, 3);
  if (granularity == "1") return Qwen2VlRegionUnits(grid, 1, 1);
  if (granularity == "grid") {
    return Qwen2VlRegionUnits(grid, options.at("image_rows").get<int64_t>(),
                              options.at("image_cols").get<int64_t>());
  }
  return absl::InvalidArgumentError("unknown image_granularity " + granularity);
}

class Qwen2VlAtmanUnitsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen2VlAtmanUnitsTest, ImageUnitsMatchThePythonReference) {
  const auto dir = testing::FixtureDir("qwen2_vl_atman_cases") / GetParam();
  auto processor = vision::Qwen2VlImageProcessor::FromDirectory(dir);
  ASSERT_TRUE(processor.ok()) << processor.status();
  const nlohmann::json cases = testing::ReadFixtureJson(dir / "cases.json").at("cases");
  ASSERT_GE(cases.size(), 6u);
  int64_t image_units = 0;
  for (const nlohmann::json& test_case : cases) {
    SCOPED_TRACE(test_case.at("name").get<std::string>());
    const nlohmann::json& expected = test_case.at("expected");
    std::vector<UnitMembers> python;
    for (const nlohmann::json& unit : expected.at("units")) {
      if (unit.at("kind") != "image") continue;
      python.push_back({unit.at("item").get<int64_t>(),
                        unit.at("positions").get<std::vector<int64_t>>(),
                        unit.at("rect").get<std::vector<double>>()});
    }
    std::vector<UnitMembers> ours;
    for (const nlohmann::json& image : expected.at("image_items")) {
      const int64_t item = image.at("item").get<int64_t>();
      const std::string file = test_case.at("prompt").at(item).at("image").get<std::string>();
      auto header = vision::ReadImageHeader(testing::ReadFixtureFile(dir / "images" / file));
      ASSERT_TRUE(header.ok()) << header.status();
      auto geometry = processor->GeometryFor(header->width, header->height);
      ASSERT_TRUE(geometry.ok()) << geometry.status();
      auto grid = Qwen2VlGridOf(*geometry);
      ASSERT_TRUE(grid.ok()) << grid.status();
      EXPECT_EQ((std::vector<int64_t>{grid->rows, grid->cols}),
                image.at("grid").get<std::vector<int64_t>>())
          << file;
      auto units = UnitsFor(*grid, test_case.at("options"));
      ASSERT_TRUE(units.ok()) << units.status();
      const int64_t first = image.at("first").get<int64_t>();
      for (const ImageRegionUnit& unit : *units) {
        UnitMembers members{item, {}, {}};
        for (int64_t token : unit.tokens) members.positions.push_back(first + token);
        members.rect = {unit.region.x0, unit.region.y0, unit.region.x1 - unit.region.x0,
                        unit.region.y1 - unit.region.y0};
        ours.push_back(std::move(members));
      }
    }
    ASSERT_EQ(ours.size(), python.size());
    image_units += static_cast<int64_t>(ours.size());
    for (size_t u = 0; u < ours.size(); ++u) {
      EXPECT_EQ(ours[u].item, python[u].item) << "unit " << u;
      EXPECT_EQ(ours[u].positions, python[u].positions) << "unit " << u;
      ASSERT_EQ(python[u].rect.size(), 4u);
      for (size_t k = 0; k < 4; ++k) {
        EXPECT_NEAR(ours[u].rect[k], python[u].rect[k], 1e-12) << "unit " << u << " rect " << k;
      }
    }
  }
  // native 9, 3x3 on both images 6 + 9, 1 twice, native 8 and the 2x3 grid's 4, native 8 of
  // the conceptual-suppression case.
  EXPECT_EQ(image_units, 9 + 15 + 1 + 1 + 4 + 8 + 8);
}

INSTANTIATE_TEST_SUITE_P(Families, Qwen2VlAtmanUnitsTest,
                         ::testing::Values("qwen2_vl", "qwen2_5_vl"));

}  // namespace
}  // namespace atman::model
