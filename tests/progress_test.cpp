// Progress reporter: text formatting, throttling of plain lines (driven by a fake clock), bar
// lines, silent mode, thread-safe counting.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/progress.h"

using namespace hxq;

namespace {

struct Capture {
  std::vector<std::string> chunks;
  double t = 0;
  ProgressOptions opts(ProgressMode mode) {
    ProgressOptions o;
    o.mode = mode;
    o.sink = [this](std::string_view s) { chunks.emplace_back(s); };
    o.clock = [this] { return t; };
    return o;
  }
  std::string all() const {
    std::string s;
    for (auto& c : chunks) s += c;
    return s;
  }
};

}  // namespace

TEST(Progress, FormatsDurationsAndAmounts) {
  EXPECT_EQ(Progress::format_duration(0), "0s");
  EXPECT_EQ(Progress::format_duration(59.4), "59s");
  EXPECT_EQ(Progress::format_duration(59.6), "1m00s");
  EXPECT_EQ(Progress::format_duration(187), "3m07s");
  EXPECT_EQ(Progress::format_duration(7500), "2h05m");
  EXPECT_EQ(Progress::format_duration(NAN), "?");
  EXPECT_EQ(Progress::format_duration(-1), "?");
  EXPECT_EQ(Progress::format_amount(450, ""), "450");
  EXPECT_EQ(Progress::format_amount(4.5, "tok"), "4.50 tok");
  EXPECT_EQ(Progress::format_amount(12.16, "tok"), "12.2 tok");
  EXPECT_EQ(Progress::format_amount(12345, ""), "12.3k");
  EXPECT_EQ(Progress::format_amount(2.5e6, "tok"), "2.50M tok");
  EXPECT_EQ(Progress::format_amount(3e9, ""), "3.00G");
  EXPECT_EQ(Progress::format_amount(100, "B"), "100 B");
  EXPECT_EQ(Progress::format_amount(1536, "B"), "1.50 KiB");
  EXPECT_EQ(Progress::format_amount(1.5 * (1 << 20), "B"), "1.50 MiB");
  EXPECT_EQ(Progress::format_amount(200.0 * (1ull << 30), "B"), "200 GiB");
}

TEST(Progress, LineAndFinalText) {
  Capture c;
  auto o = c.opts(ProgressMode::Lines);
  o.unit = "tensors";
  Progress p("compress", 1000, o);
  // 450 done after 37 s: 12.16/s, 550 left -> 45.2 s
  EXPECT_EQ(p.line_text(450, 37), "compress: 45% 450/1000 tensors, 12.2 tensors/s, elapsed 37s, ETA 45s");
  p.set_suffix("ppl 12.3");
  EXPECT_EQ(p.line_text(450, 37), "compress: 45% 450/1000 tensors, 12.2 tensors/s, elapsed 37s, ETA 45s | ppl 12.3");
  EXPECT_EQ(p.final_text(1000, 81), "compress: done 1000/1000 tensors in 1m21s (12.3 tensors/s) | ppl 12.3");
  EXPECT_EQ(p.final_text(400, 81), "compress: stopped at 400/1000 tensors in 1m21s (4.94 tensors/s) | ppl 12.3");
  // unknown total
  Progress q("eval", 0, c.opts(ProgressMode::Lines));
  EXPECT_EQ(q.line_text(300, 10), "eval: 300, 30.0/s, elapsed 10s");
  EXPECT_EQ(q.final_text(300, 10), "eval: done 300 in 10s (30.0/s)");
  // bytes
  auto ob = c.opts(ProgressMode::Lines);
  ob.unit = "B";
  Progress b("write", 4ull << 30, ob);
  EXPECT_EQ(b.line_text(1ull << 30, 2), "write: 25% 1.00 GiB/4.00 GiB, 512 MiB/s, elapsed 2s, ETA 6s");
  p.finish();
  q.finish();
  b.finish();
}

TEST(Progress, LinesThrottledByPercentSteps) {
  // a fast operation: 100 items, 4 per simulated second; a line at each 10 % step (>= 1 s apart)
  Capture c;
  {
    Progress p("fast", 100, c.opts(ProgressMode::Lines));
    for (int i = 1; i <= 100; ++i) {
      c.t = i * 0.25;
      p.advance();
    }
    c.t = 25.0;
    p.finish();
  }
  ASSERT_EQ(c.chunks.size(), 10u) << c.all();
  for (int k = 1; k <= 9; ++k)
    EXPECT_EQ(c.chunks[size_t(k - 1)].rfind(std::string("fast: ") + std::to_string(10 * k) + "% ", 0), 0u) << c.chunks[size_t(k - 1)];
  EXPECT_EQ(c.chunks[0], "fast: 10% 10/100, 4.00/s, elapsed 3s, ETA 23s\n");
  EXPECT_EQ(c.chunks[9], "fast: done 100/100 in 25s (4.00/s)\n");
  for (auto& l : c.chunks) EXPECT_EQ(l.find('\r'), std::string::npos);
}

TEST(Progress, LinesThrottledByTimeAndMinimumGap) {
  // a slow operation: one item per simulated second out of 1000: a line every 10 s
  Capture c;
  Progress p("slow", 1000, c.opts(ProgressMode::Lines));
  for (int i = 1; i <= 35; ++i) {
    c.t = i;
    p.advance();
  }
  ASSERT_EQ(c.chunks.size(), 3u) << c.all();
  EXPECT_EQ(c.chunks[0], "slow: 1% 10/1000, 1.00/s, elapsed 10s, ETA 16m30s\n");
  EXPECT_EQ(c.chunks[2].rfind("slow: 3% 30/1000", 0), 0u);
  // a burst: many steps within one second give one line at most
  Capture d;
  Progress q("burst", 100, d.opts(ProgressMode::Lines));
  d.t = 5;
  for (int i = 0; i < 99; ++i) q.advance();
  EXPECT_EQ(d.chunks.size(), 1u) << d.all();
  d.t = 5.5;
  q.set_done(99);
  EXPECT_EQ(d.chunks.size(), 1u);
  p.finish();
  q.finish();
  EXPECT_EQ(d.chunks.back(), "burst: stopped at 99/100 in 6s (18.0/s)\n");
}

TEST(Progress, SilentPrintsNothing) {
  Capture c;
  {
    Progress p("quiet", 10, c.opts(ProgressMode::Silent));
    for (int i = 0; i < 10; ++i) {
      c.t += 100;
      p.advance();
    }
    p.note("hello");
    p.finish();
  }
  EXPECT_TRUE(c.chunks.empty());
}

TEST(Progress, BarRedrawsOneLine) {
  Capture c;
  auto o = c.opts(ProgressMode::Bar);
  o.width = 80;
  o.unit = "tok";
  {
    Progress p("ppl", 200, o);
    p.set_suffix("ppl 17.25");
    for (int i = 1; i <= 200; ++i) {
      c.t = i * 0.05;
      p.advance();
      if (i == 100) p.note("a warning");
    }
    p.finish();
  }
  ASSERT_GT(c.chunks.size(), 5u);
  std::string all = c.all();
  // every redraw starts with \r and clears the rest of the line; only note() and finish() end lines
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 2);
  EXPECT_NE(all.find("a warning\n"), std::string::npos);
  for (auto& ch : c.chunks) {
    ASSERT_EQ(ch[0], '\r');
    auto text = ch.substr(ch.rfind('\r') + 1);
    if (text.rfind("\x1b[K", 0) == 0) continue;
    auto end = text.find("\x1b[K");
    ASSERT_NE(end, std::string::npos) << ch;
    EXPECT_LE(end, 79u) << text;  // never wraps
  }
  auto mid = c.chunks[c.chunks.size() / 2];
  EXPECT_NE(mid.find("ppl  "), std::string::npos) << mid;
  EXPECT_NE(mid.find("% ["), std::string::npos) << mid;
  EXPECT_NE(mid.find("/200 tok"), std::string::npos) << mid;
  EXPECT_NE(mid.find("| ppl 17.25"), std::string::npos) << mid;
  EXPECT_EQ(c.chunks.back(), "\rppl: done 200/200 tok in 10s (20.0 tok/s) | ppl 17.25\x1b[K\n");
  // bar text itself
  Progress q("x", 100, o);
  EXPECT_EQ(q.bar_text(50, 10, 60), "x  50% [##########..........] 50/100 tok 5.00 tok/s ETA 10s");
  EXPECT_EQ(q.bar_text(50, 10, 30).size(), 29u);  // cut to the width
  q.finish();
}

TEST(Progress, UnwindingDoesNotClaimDone) {
  Capture c;
  auto o = c.opts(ProgressMode::Bar);
  o.width = 60;
  try {
    Progress p("job", 10, o);
    c.t = 1;
    p.advance(3);
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  ASSERT_FALSE(c.chunks.empty());
  EXPECT_EQ(c.chunks.back(), "\n");
  EXPECT_EQ(c.all().find("done"), std::string::npos);
}

TEST(Progress, ThreadSafeAdvance) {
  std::atomic<int> lines{0};
  ProgressOptions o;
  o.mode = ProgressMode::Lines;
  o.line_min_interval_s = 0;
  o.line_percent_step = 1;
  o.sink = [&](std::string_view) { lines++; };
  Progress p("mt", 4 * 20000, o);
  std::vector<std::thread> ts;
  for (int k = 0; k < 4; ++k)
    ts.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        p.advance();
        if (i % 5000 == 0) p.set_suffix(fmt::format("s{}", i));
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(p.done(), 80000u);
  p.finish();
  EXPECT_GE(lines.load(), 1);
  EXPECT_LE(lines.load(), 101);  // at most one per percent step plus the final line
}
