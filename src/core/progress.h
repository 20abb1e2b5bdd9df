// Progress of long operations on stderr: one redrawn bar line on a terminal, plain throttled
// lines otherwise (logs, CI, --json runs), or nothing. advance() may be called from any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace hxq {

enum class ProgressMode {
  Auto,    // Bar when the stream is a terminal (and TERM is not "dumb"), else Lines
  Bar,     // "\r" + one line redrawn in place, ended by finish()
  Lines,   // a plain line now and then, and one at finish()
  Silent,  // nothing
};

struct ProgressOptions {
  ProgressMode mode = ProgressMode::Auto;
  std::string unit;                // shown after counts: "tok", "tensors"; "B" formats sizes (KiB, MiB, ...)
  double line_interval_s = 10.0;   // Lines: a line at least this often while progressing...
  double line_percent_step = 10.0; // ...and whenever another this many percent are done,
  double line_min_interval_s = 1.0;  // but never two lines closer than this
  double bar_interval_s = 0.1;     // Bar: redraw at most this often
  int width = 0;                   // Bar: line width; 0 = the terminal's (80 if unknown)
  std::FILE* stream = stderr;
  std::function<void(std::string_view)> sink;  // receives the text instead of `stream` (tests)
  std::function<double()> clock;               // seconds; default: steady clock (tests inject)
};

// Progress("compress", n_tensors, {.unit = "tensors"}); p.advance(); p.set_suffix("ppl 12.3");
// p.finish(). A line reads (Lines mode):
//   compress: 45% 450/1000 tensors, 12.3 tensors/s, elapsed 37s, ETA 45s | ppl 12.3
// and at finish():
//   compress: done 1000/1000 tensors in 1m21s (12.3 tensors/s) | ppl 12.3
// With total 0 (unknown) the percent, bar and ETA are left out. Destroyed while an exception
// unwinds, it only ends the bar line (no "done" claim).
class Progress {
 public:
  Progress(std::string label, uint64_t total, ProgressOptions opt = {});
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t n = 1);          // thread-safe
  void set_done(uint64_t done);          // thread-safe
  void set_total(uint64_t total);        // thread-safe
  void set_suffix(std::string suffix);   // thread-safe; shown after the numbers
  void note(std::string_view line);      // prints a line of its own (the bar is redrawn after it)
  void finish();                         // final report; idempotent

  uint64_t done() const { return done_.load(std::memory_order_relaxed); }
  uint64_t total() const { return total_.load(std::memory_order_relaxed); }
  ProgressMode mode() const { return mode_; }

  // Formatting, public for tests.
  static std::string format_duration(double seconds);                 // "9s", "3m07s", "2h05m"
  static std::string format_amount(double v, const std::string& unit);  // "450", "4.50", "12.3k", "1.50 MiB"
  std::string line_text(uint64_t done, double elapsed) const;           // a Lines-mode line (no newline)
  std::string final_text(uint64_t done, double elapsed) const;          // the finish() line
  std::string bar_text(uint64_t done, double elapsed, int width) const;  // a Bar-mode line (no \r)

 private:
  double now() const;
  void maybe_emit(bool force);
  void emit(const std::string& s);
  std::string rate_text(uint64_t done, double elapsed) const;

  std::string label_;
  ProgressOptions opt_;
  ProgressMode mode_;
  int width_ = 80;
  double start_ = 0;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> total_{0};
  std::atomic<double> next_check_{0};  // cheap gate before taking the lock
  mutable std::mutex mu_;              // guards everything below and the output
  std::string suffix_;
  double last_emit_ = 0;
  double next_pct_ = 0;                // Lines: the percentage that triggers the next line
  bool drawn_ = false;                 // Bar: a line is on screen
  bool finished_ = false;
};

}  // namespace hxq
