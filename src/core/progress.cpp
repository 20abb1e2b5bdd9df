#include "core/progress.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace hxq {

namespace {

// Cuts s to at most n bytes without splitting a UTF-8 sequence.
void cut_utf8(std::string& s, size_t n) {
  if (s.size() <= n) return;
  s.resize(n);
  while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xc0) == 0x80) s.pop_back();
  if (!s.empty() && static_cast<unsigned char>(s.back()) >= 0xc0) s.pop_back();
}

// Display columns of UTF-8 text, counting each code point as one column.
size_t columns(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xc0) != 0x80) ++n;
  return n;
}

std::string num3(double x) {  // about 3 significant digits
  if (x < 10) return fmt::format("{:.2f}", x);
  if (x < 100) return fmt::format("{:.1f}", x);
  return fmt::format("{:.0f}", x);
}

}  // namespace

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto t = uint64_t(std::llround(s));
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
}

std::string Progress::format_amount(double v, const std::string& unit) {
  if (!std::isfinite(v) || v < 0) return unit.empty() ? "?" : "? " + unit;
  if (unit == "B") {
    if (v < 1024) return fmt::format("{:.0f} B", v);
    const char* names[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    int i = 0;
    v /= 1024;
    while (v >= 1024 && i < 4) {
      v /= 1024;
      ++i;
    }
    return num3(v) + " " + names[i];
  }
  std::string s;
  if (v < 1000) {
    s = num3(v);
  } else if (v < 1e6) {
    s = num3(v / 1e3) + "k";
  } else if (v < 1e9) {
    s = num3(v / 1e6) + "M";
  } else {
    s = num3(v / 1e9) + "G";
  }
  return unit.empty() ? s : s + " " + unit;
}

Progress::Progress(std::string label, uint64_t total, ProgressOptions opt)
    : label_(std::move(label)), opt_(std::move(opt)), mode_(opt_.mode) {
  total_.store(total, std::memory_order_relaxed);
  if (mode_ == ProgressMode::Auto) {
    const char* term = std::getenv("TERM");
    bool tty = !opt_.sink && opt_.stream && ::isatty(::fileno(opt_.stream)) &&
               !(term && std::strcmp(term, "dumb") == 0);
    mode_ = tty ? ProgressMode::Bar : ProgressMode::Lines;
  }
  width_ = opt_.width;
  if (width_ <= 0) {
    width_ = 80;
    struct winsize ws {};
    if (!opt_.sink && opt_.stream && ::ioctl(::fileno(opt_.stream), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
      width_ = ws.ws_col;
  }
  start_ = now();
  last_emit_ = start_;
  next_pct_ = opt_.line_percent_step;
  double gap = mode_ == ProgressMode::Bar ? opt_.bar_interval_s : opt_.line_min_interval_s;
  next_check_.store(start_ + gap, std::memory_order_relaxed);
}

Progress::~Progress() {
  try {
    if (std::uncaught_exceptions() > 0) {
      std::lock_guard lk(mu_);
      if (!finished_ && mode_ == ProgressMode::Bar && drawn_) emit("\n");
      finished_ = true;
    } else {
      finish();
    }
  } catch (...) {
  }
}

double Progress::now() const {
  if (opt_.clock) return opt_.clock();
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void Progress::emit(const std::string& s) {
  if (opt_.sink) {
    opt_.sink(s);
  } else if (opt_.stream) {
    std::fwrite(s.data(), 1, s.size(), opt_.stream);
    std::fflush(opt_.stream);
  }
}

void Progress::advance(uint64_t n) {
  done_.fetch_add(n, std::memory_order_relaxed);
  maybe_emit(false);
}

void Progress::set_done(uint64_t d) {
  done_.store(d, std::memory_order_relaxed);
  maybe_emit(false);
}

void Progress::set_total(uint64_t t) { total_.store(t, std::memory_order_relaxed); }

void Progress::set_suffix(std::string s) {
  std::lock_guard lk(mu_);
  suffix_ = std::move(s);
}

void Progress::maybe_emit(bool force) {
  if (mode_ == ProgressMode::Silent) return;
  double t = now();
  if (!force && t < next_check_.load(std::memory_order_relaxed)) return;
  std::unique_lock lk(mu_, std::try_to_lock);
  if (!lk.owns_lock() || finished_) return;
  const uint64_t d = done(), tot = total();
  const double elapsed = t - start_;
  if (mode_ == ProgressMode::Bar) {
    emit(fmt::format("\r{}\x1b[K", bar_text(d, elapsed, width_)));
    drawn_ = true;
    last_emit_ = t;
    next_check_.store(t + opt_.bar_interval_s, std::memory_order_relaxed);
    return;
  }
  // Lines
  if (tot > 0 && d >= tot) return;  // finish() reports completion
  const double pct = tot > 0 ? 100.0 * double(d) / double(tot) : 0.0;
  const bool by_time = t - last_emit_ >= opt_.line_interval_s;
  const bool by_pct = tot > 0 && opt_.line_percent_step > 0 && pct >= next_pct_;
  if (force || by_time || by_pct) {
    emit(line_text(d, elapsed) + "\n");
    last_emit_ = t;
    if (opt_.line_percent_step > 0)
      next_pct_ = (std::floor(pct / opt_.line_percent_step) + 1) * opt_.line_percent_step;
  }
  // re-arm: the next chance is after the minimum gap (a percentage step may be due by then)
  next_check_.store(last_emit_ + opt_.line_min_interval_s, std::memory_order_relaxed);
}

void Progress::note(std::string_view line) {
  if (mode_ == ProgressMode::Silent) return;
  std::lock_guard lk(mu_);
  if (mode_ == ProgressMode::Bar && drawn_ && !finished_) {
    emit(fmt::format("\r\x1b[K{}\n", line));
    emit(fmt::format("\r{}\x1b[K", bar_text(done(), now() - start_, width_)));
  } else {
    emit(std::string(line) + "\n");
  }
}

void Progress::finish() {
  std::lock_guard lk(mu_);
  if (finished_) return;
  finished_ = true;
  if (mode_ == ProgressMode::Silent) return;
  double elapsed = now() - start_;
  std::string s = final_text(done(), elapsed);
  if (mode_ == ProgressMode::Bar) {
    if (int(columns(s)) > width_ - 1) cut_utf8(s, size_t(std::max(width_ - 1, 10)));
    emit(fmt::format("\r{}\x1b[K\n", s));
  } else {
    emit(s + "\n");
  }
}

std::string Progress::rate_text(uint64_t d, double elapsed) const {
  if (elapsed <= 0) return "";
  std::string r = format_amount(double(d) / elapsed, opt_.unit);
  return r + "/s";
}

std::string Progress::line_text(uint64_t d, double elapsed) const {
  const uint64_t tot = total();
  const bool bytes = opt_.unit == "B";
  const std::string sp_unit = opt_.unit.empty() || bytes ? "" : " " + opt_.unit;
  std::string s = label_ + ": ";
  if (tot > 0) {
    s += fmt::format("{}% ", uint64_t(100.0 * double(d) / double(tot)));
    s += bytes ? format_amount(double(d), "B") + "/" + format_amount(double(tot), "B")
               : fmt::format("{}/{}{}", d, tot, sp_unit);
  } else {
    s += bytes ? format_amount(double(d), "B") : fmt::format("{}{}", d, sp_unit);
  }
  if (auto r = rate_text(d, elapsed); !r.empty()) (s += ", ") += r;
  (s += ", elapsed ") += format_duration(elapsed);
  if (tot > 0 && d > 0 && d < tot && elapsed > 0)
    (s += ", ETA ") += format_duration(double(tot - d) * elapsed / double(d));
  if (!suffix_.empty()) (s += " | ") += suffix_;
  return s;
}

std::string Progress::final_text(uint64_t d, double elapsed) const {
  const uint64_t tot = total();
  const bool bytes = opt_.unit == "B";
  const std::string sp_unit = opt_.unit.empty() || bytes ? "" : " " + opt_.unit;
  std::string s = label_ + (tot > 0 && d < tot ? ": stopped at " : ": done ");
  if (tot > 0) {
    s += bytes ? format_amount(double(d), "B") + "/" + format_amount(double(tot), "B")
               : fmt::format("{}/{}{}", d, tot, sp_unit);
  } else {
    s += bytes ? format_amount(double(d), "B") : fmt::format("{}{}", d, sp_unit);
  }
  (s += " in ") += format_duration(elapsed);
  if (auto r = rate_text(d, elapsed); !r.empty()) (s += " (") += r + ")";
  if (!suffix_.empty()) (s += " | ") += suffix_;
  return s;
}

std::string Progress::bar_text(uint64_t d, double elapsed, int width) const {
  const uint64_t tot = total();
  const bool bytes = opt_.unit == "B";
  const std::string sp_unit = opt_.unit.empty() || bytes ? "" : " " + opt_.unit;
  std::string left = label_;
  std::string right;
  if (tot > 0) {
    left += fmt::format(" {:3d}%", uint64_t(100.0 * double(d) / double(tot)));
    right = bytes ? format_amount(double(d), "B") + "/" + format_amount(double(tot), "B")
                  : fmt::format("{}/{}{}", d, tot, sp_unit);
  } else {
    right = bytes ? format_amount(double(d), "B") : fmt::format("{}{}", d, sp_unit);
  }
  if (auto r = rate_text(d, elapsed); !r.empty()) (right += " ") += r;
  if (tot > 0 && d > 0 && d < tot && elapsed > 0)
    (right += " ETA ") += format_duration(double(tot - d) * elapsed / double(d));
  else
    (right += " ") += format_duration(elapsed);
  if (!suffix_.empty()) (right += " | ") += suffix_;
  std::string s = left;
  if (tot > 0) {
    int room = width - 1 - int(columns(left)) - int(columns(right)) - 4;  // " [" "] "
    int bw = std::min(room, 30);
    if (bw >= 10) {
      int fill = int(std::min<double>(1.0, double(d) / double(tot)) * bw);
      s += fmt::format(" [{}{}]", std::string(size_t(fill), '#'), std::string(size_t(bw - fill), '.'));
    }
  }
  (s += " ") += right;
  if (int(columns(s)) > width - 1) cut_utf8(s, size_t(std::max(width - 1, 10)));
  return s;
}

}  // namespace hxq
