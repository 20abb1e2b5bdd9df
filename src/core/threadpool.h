// The engine's thread pool: a fixed set of workers that run parallel_for over index ranges,
// the calling thread taking part. One global pool sized by --threads (default: all cores).
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace hxq {

// A non-owning reference to a callable (no allocation, unlike std::function): valid only while
// the referenced object lives, i.e. for the duration of the call it is passed to.
template <class Sig>
class FnRef;

template <class R, class... Args>
class FnRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FnRef> && std::is_invocable_r_v<R, F&, Args...>)
  FnRef(F&& f) noexcept  // NOLINT: implicit, like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... a) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...);
        }) {}
  R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

class ThreadPool {
 public:
  // `threads` includes the calling thread (threads - 1 workers are started).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end, share) on disjoint ranges covering [0, n), at most one range per
  // thread of the pool; ranges are at least `grain` long (except when n < grain), so work of
  // fewer than 2 × grain items runs on the caller without waking anybody. `share` is unique among
  // the calls running at the same time (< size()). Blocks until all are done; exceptions from fn
  // are rethrown.
  void parallel_for(int64_t n, FnRef<void(int64_t, int64_t, int)> fn, int64_t grain = 1);

  // Calls fn(share, size()) once for every share in [0, size()), in parallel on the pool's
  // threads. A share is taken by whichever thread comes first: when a worker is slow to wake (a
  // busy machine), the caller runs its share as well instead of waiting for it. Called from
  // inside a job (nested parallelism), it runs fn(0, 1) on the calling thread.
  void run_on_all(FnRef<void(int, int)> fn);

  // How long an idle worker (and a caller waiting for workers) spins before sleeping in the
  // kernel, in microseconds. Spinning makes the next job start within ~1 µs instead of the
  // 10-100 µs of a futex wake-up; sleeping frees the core. Default 200 µs, or HXQ_SPIN_US.
  void set_spin_us(int us) { spin_ns_.store(int64_t(us < 0 ? 0 : us) * 1000, std::memory_order_relaxed); }
  int spin_us() const { return int(spin_ns_.load(std::memory_order_relaxed) / 1000); }

 private:
  void worker_loop();
  // Takes and runs shares of job `gen` until none is left; false if it got none.
  bool run_shares(uint32_t gen);
  void record_error(std::exception_ptr e);

  std::vector<std::thread> workers_;
  std::mutex submit_mu_;  // one job at a time when several outside threads share the pool
  std::mutex err_mu_;
  std::exception_ptr error_;
  FnRef<void(int, int)>* job_ = nullptr;
  // A job: job_ is written, remaining_ set, claim_ = (generation << 32 | next share), then gen_
  // (the workers' futex word) advanced. Shares are claimed with a CAS on claim_ that fails once
  // the generation moved on, so a late worker never touches a finished job. remaining_ counts
  // shares not finished yet (the caller's futex word).
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<uint32_t> gen_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<int32_t> remaining_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<int64_t> spin_ns_{200'000};
};

// The process-wide pool. set_num_threads() (re)creates it; 0 means all cores.
ThreadPool& pool();
void set_num_threads(int n);
int hardware_threads();

}  // namespace hxq
