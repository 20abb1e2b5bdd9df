#include "core/threadpool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>

namespace hxq {

namespace {
// True on a thread while it runs a pool job: nested parallel calls then run inline (serially)
// instead of waiting for workers that are busy with the outer job.
thread_local bool t_in_job = false;

struct InJob {
  bool prev;
  InJob() : prev(t_in_job) { t_in_job = true; }
  ~InJob() { t_in_job = prev; }
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Blocks while *addr == expected (or until a wake-up; callers re-check their condition).
void futex_wait(const void* addr, uint32_t expected) {
  syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake(const void* addr, int n) { syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0); }

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Spins until done() or until spin_ns have passed; returns done(). Pure pause loops for the
// first kPureSpinNs, then sched_yield between checks so that a busy machine's other runnable
// threads (another process, or the very thread we wait for) get the core.
constexpr int64_t kPureSpinNs = 5'000;
template <class Done>
bool spin_until(Done done, int64_t spin_ns) {
  if (done()) return true;
  if (spin_ns <= 0) return false;
  const int64_t t0 = now_ns();
  for (int i = 1;; ++i) {
    for (int k = 0; k < 32; ++k) {
      cpu_relax();
      if (done()) return true;
    }
    if ((i & 7) == 0) {
      const int64_t dt = now_ns() - t0;
      if (dt > spin_ns) return done();
      if (dt > kPureSpinNs) sched_yield();
    }
  }
}

int default_spin_us() {
  if (const char* e = std::getenv("HXQ_SPIN_US"); e && *e) {
    char* end = nullptr;
    long v = std::strtol(e, &end, 10);
    if (end != e && v >= 0 && v <= 1'000'000) return int(v);
  }
  return 200;
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  set_spin_us(default_spin_us());
  threads = std::max(1, threads);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_seq_cst);
  gen_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake(&gen_, INT_MAX);
  for (auto& t : workers_) t.join();
}

void ThreadPool::record_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lk(err_mu_);
  if (!error_) error_ = std::move(e);
}

bool ThreadPool::run_shares(uint32_t gen) {
  const uint64_t n = uint64_t(size());
  bool any = false;
  uint64_t v = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (uint32_t(v >> 32) != gen || (v & 0xffffffffu) >= n) return any;
    if (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // Share (v & mask) of job `gen` is ours: the job cannot finish before we do.
    any = true;
    try {
      InJob guard;
      (*job_)(int(v & 0xffffffffu), int(n));
    } catch (...) {
      record_error(std::current_exception());
    }
    if (remaining_.fetch_sub(1, std::memory_order_seq_cst) == 1 && caller_sleeping_.load(std::memory_order_seq_cst))
      futex_wake(&remaining_, 1);
    v = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  for (;;) {
    auto changed = [&] { return gen_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(changed, spin_ns_.load(std::memory_order_relaxed))) {
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      // futex_wait returns at once when gen_ != seen already (no lost wake-up: the submitter
      // advances gen_ before it reads sleepers_).
      while (gen_.load(std::memory_order_seq_cst) == seen) futex_wait(&gen_, seen);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    seen = gen_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    run_shares(seen);
  }
}

void ThreadPool::run_on_all(FnRef<void(int, int)> fn) {
  if (workers_.empty() || t_in_job) {  // nested call from inside a job: run serially here
    InJob guard;
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> submit(submit_mu_);
  const uint32_t gen = gen_.load(std::memory_order_relaxed) + 1;
  job_ = &fn;
  error_ = nullptr;
  remaining_.store(int32_t(size()), std::memory_order_relaxed);
  claim_.store(uint64_t(gen) << 32, std::memory_order_release);
  gen_.store(gen, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake(&gen_, INT_MAX);
  run_shares(gen);  // the caller works too, and takes over shares no worker has started
  auto done = [&] { return remaining_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, spin_ns_.load(std::memory_order_relaxed))) {
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    for (int32_t p; (p = remaining_.load(std::memory_order_seq_cst)) != 0;) futex_wait(&remaining_, uint32_t(p));
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
  job_ = nullptr;
  if (error_) {
    std::exception_ptr e = std::move(error_);
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void ThreadPool::parallel_for(int64_t n, FnRef<void(int64_t, int64_t, int)> fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = std::min<int64_t>(size(), n / grain);
  if (chunks <= 1 || t_in_job) {
    InJob guard;
    fn(0, n, 0);
    return;
  }
  run_on_all([&](int t, int) {
    if (t >= chunks) return;
    const int64_t b = n * t / chunks, e = n * (t + 1) / chunks;
    if (b < e) fn(b, e, t);
  });
}

namespace {
std::unique_ptr<ThreadPool>& global_pool() {
  static std::unique_ptr<ThreadPool> p;
  return p;
}
}  // namespace

int hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

ThreadPool& pool() {
  auto& p = global_pool();
  if (!p) p = std::make_unique<ThreadPool>(hardware_threads());
  return *p;
}

void set_num_threads(int n) {
  auto& p = global_pool();
  int want = n > 0 ? n : hardware_threads();
  if (p && p->size() == want) return;
  p.reset();
  p = std::make_unique<ThreadPool>(want);
}

}  // namespace hxq
