// Rendering of the `atman` tool without a server: the colour scale, cutting text at code-point
// spans, the terminal heatmap, the PNG overlay and the HTML report of responses built here.
#include <cmath>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "client/heatmap.h"
#include "client/html_report.h"
#include "client/overlay.h"

namespace atman::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ColourScale, EndsAndMiddleAreExact) {
  ColourScale scale(2.0);
  EXPECT_EQ(scale.At(2.0), kHot);
  EXPECT_EQ(scale.At(5.0), kHot);  // clamped
  EXPECT_EQ(scale.At(-2.0), kCold);
  EXPECT_EQ(scale.At(0.0), kWhite);
  // Half way: 255 + (215 - 255) / 2 = 235, 255 + (48 - 255) / 2 = 151.5 -> 152, 147.
  EXPECT_EQ(scale.At(1.0), (Rgb{235, 152, 147}));
  EXPECT_EQ(scale.At(-1.0), (Rgb{162, 186, 218}));
  EXPECT_DOUBLE_EQ(scale.Alpha(-1.0), kOverlayMaxAlpha / 2);
  EXPECT_DOUBLE_EQ(scale.Alpha(2.0), kOverlayMaxAlpha);
}

TEST(ColourScale, AllZeroScoresUseUnitRange) {
  EXPECT_EQ(ColourScale(0.0).max_abs(), 1.0);
  pb::TargetExplanation e;
  e.add_items()->add_text()->set_score(0.0);
  EXPECT_EQ(ColourScale::For(e).max_abs(), 1.0);
  e.add_items()->add_image()->set_score(-3.5);
  e.add_target()->set_score(2.0);
  EXPECT_EQ(ColourScale::For(e).max_abs(), 3.5);
}

TEST(CutText, SpansAreCodePointsAndGapsKeepTheirText) {
  const std::string text = "h\xC3\xA9llo w\xC3\xB6rld \xF0\x9F\x99\x82!";  // héllo wörld 🙂!
  google::protobuf::RepeatedPtrField<pb::TextScore> scores;
  auto add = [&](int start, int length, double score) {
    pb::TextScore* s = scores.Add();
    s->set_start(start);
    s->set_length(length);
    s->set_score(score);
  };
  add(6, 5, -0.5);   // wörld (given out of order)
  add(0, 5, 1.0);    // héllo
  add(12, 1, 0.25);  // 🙂
  auto pieces = CutText(text, scores);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  ASSERT_EQ(pieces->size(), 6u);
  EXPECT_EQ((*pieces)[0].text, "h\xC3\xA9llo");
  EXPECT_EQ((*pieces)[0].score, 1.0);
  EXPECT_EQ((*pieces)[1].text, " ");
  EXPECT_FALSE((*pieces)[1].score.has_value());
  EXPECT_EQ((*pieces)[2].text, "w\xC3\xB6rld");
  EXPECT_EQ((*pieces)[3].text, " ");
  EXPECT_EQ((*pieces)[4].text, "\xF0\x9F\x99\x82");
  EXPECT_EQ((*pieces)[4].score, 0.25);
  EXPECT_EQ((*pieces)[5].text, "!");
}

TEST(CutText, SpanOutsideOrOverlappingIsAnError) {
  google::protobuf::RepeatedPtrField<pb::TextScore> scores;
  scores.Add()->set_start(3);
  scores.Mutable(0)->set_length(3);
  auto outside = CutText("abcd", scores);
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(outside.status().message()), HasSubstr("[3, 6)"));
  scores.Mutable(0)->set_length(1);
  scores.Add()->set_start(2);
  scores.Mutable(1)->set_length(2);
  EXPECT_THAT(std::string(CutText("abcdef", scores).status().message()), HasSubstr("overlaps"));
}

TEST(CodePointOffsets, InvalidBytesCountAsOneEach) {
  EXPECT_EQ(CodePointOffsets("a\xFF"
                             "b"),
            (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(CodePointOffsets("\xC3\xA9x"), (std::vector<size_t>{0, 2, 3}));
}

pb::ExplainRequest TextRequest() {
  pb::ExplainRequest request;
  request.add_prompt()->set_text("The <b>cat</b> sat");
  request.set_target(" down");
  return request;
}

pb::ExplainResponse TextResponse() {
  pb::ExplainResponse response;
  response.set_target(" down");
  response.set_request_id("r-1");
  pb::ItemScores* item = response.add_explanations()->add_items();
  item->set_item(0);
  auto add = [&](int start, int length, double score) {
    pb::TextScore* s = item->add_text();
    s->set_start(start);
    s->set_length(length);
    s->set_score(score);
  };
  add(0, 3, 0.5);    // The
  add(4, 10, -1.0);  // <b>cat</b>
  add(15, 3, 2.0);   // sat
  response.mutable_usage()->set_prompt_tokens(7);
  response.mutable_usage()->set_queue_seconds(0.25);
  return response;
}

TEST(RenderTerminal, PlainMarksCarryEveryScore) {
  auto text = RenderTerminal(TextRequest(), TextResponse(), /*truecolor=*/false);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, HasSubstr("[The|+0.5000] [<b>cat</b>|-1.0000] [sat|+2.0000]"));
  EXPECT_THAT(*text, HasSubstr("prompt_tokens=7"));
  EXPECT_THAT(*text, HasSubstr("queue=0.250s"));
  EXPECT_THAT(*text, Not(HasSubstr("\x1b[")));
}

TEST(FormatScore, FourDecimalsOrScientificWhenThatWouldRoundToZero) {
  EXPECT_EQ(FormatScore(0.5), "+0.5000");
  EXPECT_EQ(FormatScore(-18.78304), "-18.7830");
  EXPECT_EQ(FormatScore(0.0), "+0.0000");
  EXPECT_EQ(FormatScore(1.0056e-7), "+1.01e-07");
  EXPECT_EQ(FormatScore(-4.9e-5), "-4.90e-05");
  EXPECT_EQ(FormatScore(5e-5), "+0.0001");
}

TEST(RenderTerminal, ShowsTheTargetProbability) {
  pb::ExplainResponse response = TextResponse();
  EXPECT_THAT(*RenderTerminal(TextRequest(), response, false), HasSubstr("target: \" down\"\n"));
  response.add_target_log_probs(std::log(0.5));
  response.add_target_log_probs(std::log(0.5));
  EXPECT_THAT(*RenderTerminal(TextRequest(), response, false),
              HasSubstr("target: \" down\" (p = 0.25)\n"));
}

TEST(RenderTerminal, TruecolourUsesTheScaleColours) {
  auto text = RenderTerminal(TextRequest(), TextResponse(), /*truecolor=*/true);
  ASSERT_TRUE(text.ok()) << text.status();
  // sat has the largest |score|: the hot end; <b>cat</b> is -1/2 of it.
  EXPECT_THAT(*text, HasSubstr("\x1b[48;2;215;48;39m\x1b[38;2;255;255;255msat\x1b[0m"));
  const Rgb half_cold = ColourScale(2.0).At(-1.0);
  EXPECT_THAT(*text, HasSubstr(absl::StrCat("\x1b[48;2;", half_cold.r, ";", half_cold.g, ";",
                                            half_cold.b, "m")));
}

TEST(RenderTerminal, LineBreaksInsideUnitsStayReadable) {
  pb::ExplainRequest request;
  request.add_prompt()->set_text("a\nb");
  pb::ExplainResponse response;
  pb::TextScore* s = response.add_explanations()->add_items()->add_text();
  s->set_length(3);
  s->set_score(1.0);
  auto plain = RenderTerminal(request, response, false);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_THAT(*plain, HasSubstr("[a\\nb|+1.0000]"));
  auto colour = RenderTerminal(request, response, true);
  ASSERT_TRUE(colour.ok()) << colour.status();
  const std::string hot = "\x1b[48;2;215;48;39m\x1b[38;2;255;255;255m";
  EXPECT_THAT(*colour, HasSubstr(hot + "a\x1b[0m\n" + hot + "b\x1b[0m"));
}

TEST(RenderTerminal, ItemIndexOutsideThePromptIsAnError) {
  pb::ExplainResponse response = TextResponse();
  response.mutable_explanations(0)->mutable_items(0)->set_item(3);
  EXPECT_EQ(RenderTerminal(TextRequest(), response, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TerminalHasTrueColour, OnlyTruecolorAnd24bit) {
  EXPECT_TRUE(TerminalHasTrueColour("truecolor"));
  EXPECT_TRUE(TerminalHasTrueColour("24bit"));
  EXPECT_FALSE(TerminalHasTrueColour("256"));
  EXPECT_FALSE(TerminalHasTrueColour(""));
  EXPECT_FALSE(TerminalHasTrueColour(nullptr));
}

RgbImage Grey(int w, int h, uint8_t level) {
  RgbImage image;
  image.width = w;
  image.height = h;
  image.pixels.assign(static_cast<size_t>(w) * h * 3, level);
  return image;
}

TEST(Overlay, BlendsEachRectangleOverItsPixelsAndDrawsTheBar) {
  const RgbImage image = Grey(4, 2, 100);  // enlarged by 128 -> 512 x 256
  ASSERT_EQ(OverlayScale(4, 2), 128);
  google::protobuf::RepeatedPtrField<pb::ImageScore> scores;
  pb::ImageScore* left = scores.Add();
  left->set_left(0);
  left->set_top(0);
  left->set_width(0.5);
  left->set_height(1);
  left->set_score(2.0);
  pb::ImageScore* right = scores.Add();
  right->set_left(0.5);
  right->set_top(0.5);
  right->set_width(0.5);
  right->set_height(0.5);
  right->set_score(-1.0);
  const ColourScale scale(2.0);
  const RgbImage out = RenderOverlay(image, scores, scale);
  ASSERT_EQ(out.width, 512);
  ASSERT_EQ(out.height, 256 + kColourBarGap + kColourBarHeight + kColourBarLabelHeight);
  auto pixel = [&](int x, int y) {
    const uint8_t* p = &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3];
    return Rgb{p[0], p[1], p[2]};
  };
  auto blend = [](uint8_t base, uint8_t c, double a) {
    return static_cast<uint8_t>(std::lround((1 - a) * base + a * c));
  };
  const double a = kOverlayMaxAlpha;
  EXPECT_EQ(pixel(0, 0), (Rgb{blend(100, 215, a), blend(100, 48, a), blend(100, 39, a)}));
  EXPECT_EQ(pixel(255, 255), pixel(0, 0));
  EXPECT_EQ(pixel(256, 0), (Rgb{100, 100, 100}));  // right half, top: no unit
  const Rgb c = scale.At(-1.0);
  const double b = scale.Alpha(-1.0);
  EXPECT_EQ(pixel(511, 255), (Rgb{blend(100, c.r, b), blend(100, c.g, b), blend(100, c.b, b)}));
  EXPECT_EQ(pixel(256, 128), pixel(511, 255));
  EXPECT_EQ(pixel(256, 127), (Rgb{100, 100, 100}));
  // Gap white; the bar runs from the cold end to the hot end.
  EXPECT_EQ(pixel(10, 256 + 2), kWhite);
  const int bar = 256 + kColourBarGap + kColourBarHeight - 1;
  EXPECT_EQ(pixel(0, bar), scale.At(-2.0 * 511.0 / 512.0));
  EXPECT_EQ(pixel(511, bar), scale.At(2.0 * 511.0 / 512.0));
  // Labels under the bar: ink at the left end, the middle and the right end, nothing else.
  auto ink_in = [&](int x0, int x1) {
    int n = 0;
    for (int y = bar + 1; y < out.height; ++y) {
      for (int x = x0; x < x1; ++x) n += pixel(x, y) == Rgb{34, 34, 34};
    }
    return n;
  };
  EXPECT_GT(ink_in(0, 100), 20);    // "-2.0000"
  EXPECT_GT(ink_in(246, 266), 5);   // "0"
  EXPECT_GT(ink_in(412, 512), 20);  // "+2.0000"
  EXPECT_EQ(ink_in(120, 230), 0);
}

TEST(Overlay, PngRoundTripsThroughTheDecoder) {
  RgbImage image = Grey(3, 2, 7);
  image.pixels[4] = 200;
  auto png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(ImageMimeType(*png), "image/png");
  auto decoded = DecodeImage(*png, "roundtrip");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->width, 3);
  EXPECT_EQ(decoded->height, 2);
  EXPECT_EQ(decoded->pixels, image.pixels);
}

TEST(Overlay, UndecodableBytesNameTheInput) {
  auto r = DecodeImage("not an image", "--image x.png");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--image x.png"));
  auto truncated = DecodeImage(std::string("\x89PNG\r\n\x1a\n\0\0", 10), "t.png");
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(truncated.status().message()), HasSubstr("cannot be decoded"));
}

TEST(HtmlReport, SelfContainedWithScoresAsColoursAndTitles) {
  auto html = RenderHtmlReport(TextRequest(), TextResponse(), nullptr);
  ASSERT_TRUE(html.ok()) << html.status();
  EXPECT_THAT(*html, HasSubstr("Content-Security-Policy"));
  EXPECT_THAT(*html, HasSubstr("default-src 'none'"));
  EXPECT_THAT(*html, Not(HasSubstr("http://")));
  EXPECT_THAT(*html, Not(HasSubstr("https://")));
  // Prompt text is escaped, scored with its colour and hover value.
  EXPECT_THAT(*html, HasSubstr("style=\"background:rgb(215,48,39)\" title=\"+2.0000\""));
  EXPECT_THAT(*html, HasSubstr("&lt;b&gt;cat&lt;/b&gt;</span>"));
  EXPECT_THAT(*html, Not(HasSubstr("<b>cat</b>")));
  EXPECT_THAT(*html, HasSubstr("<tr><th>queue</th><td>0.250 s</td></tr>"));
}

TEST(HtmlReport, ImagesAreDataUrlsUnderTheirCells) {
  pb::ExplainRequest request;
  auto png = EncodePng(Grey(40, 28, 90));
  ASSERT_TRUE(png.ok());
  request.add_prompt()->set_image(*png);
  pb::ExplainResponse response;
  pb::ItemScores* item = response.add_explanations()->add_items();
  item->set_item(0);
  pb::ImageScore* s = item->add_image();
  s->set_left(0.25);
  s->set_top(0.5);
  s->set_width(0.25);
  s->set_height(0.5);
  s->set_score(-3.0);
  auto html = RenderHtmlReport(request, response, nullptr);
  ASSERT_TRUE(html.ok()) << html.status();
  EXPECT_THAT(*html, HasSubstr("src=\"data:image/png;base64,"));
  EXPECT_THAT(*html, HasSubstr("width=\"320\" height=\"224\" class=\"pixelated\""));
  EXPECT_THAT(*html, HasSubstr("left:25.0000%;top:50.0000%;width:25.0000%;height:50.0000%;"
                               "background:rgba(69,117,180,0.6500)\" title=\"-3.0000\""));
  request.mutable_prompt(0)->set_image("GIF87a-but-truncated");
  EXPECT_EQ(RenderHtmlReport(request, response, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HtmlReport, TokenGranularityHasOneSectionPerTargetToken) {
  pb::ExplainRequest request = TextRequest();
  request.mutable_options()->set_target_granularity(pb::TARGET_GRANULARITY_TOKEN);
  pb::ExplainResponse response = TextResponse();
  response.set_target(" do wn");
  *response.add_explanations() = response.explanations(0);
  response.mutable_explanations(0)->set_target_length(3);
  response.mutable_explanations(1)->set_target_start(3);
  response.mutable_explanations(1)->set_target_length(3);
  pb::TextScore* earlier = response.mutable_explanations(1)->add_target();
  earlier->set_start(0);
  earlier->set_length(3);
  earlier->set_score(-2.0);
  auto html = RenderHtmlReport(request, response, nullptr);
  ASSERT_TRUE(html.ok()) << html.status();
  EXPECT_THAT(*html, HasSubstr("<h2>Target token 0: \" do\"</h2>"));
  EXPECT_THAT(*html, HasSubstr("<h2>Target token 1: \" wn\"</h2>"));
  EXPECT_THAT(*html, HasSubstr("id=\"explanation-1\""));
  // The earlier token " do" coloured in token 1's view; " wn" outlined.
  EXPECT_THAT(*html, HasSubstr("title=\"-2.0000\" data-score=\"-2\"> do</span><span "
                               "class=\"piece\"> wn</span>"));
}

TEST(DisplaySize, EnlargesSmallImagesByWholeFactors) {
  EXPECT_EQ(DisplaySize(40, 28), (std::pair<int, int>{320, 224}));
  EXPECT_EQ(DisplaySize(21, 35), (std::pair<int, int>{189, 315}));
  EXPECT_EQ(DisplaySize(500, 400), (std::pair<int, int>{500, 400}));
  EXPECT_EQ(DisplaySize(1280, 720), (std::pair<int, int>{640, 360}));
}

}  // namespace
}  // namespace atman::client
