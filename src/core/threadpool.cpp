#include "core/threadpool.h"

#include <algorithm>
#include <memory>

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
}  // namespace

ThreadPool::ThreadPool(int threads) {
  threads = std::max(1, threads);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int idx) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int, int)>* job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr err;
    try {
      InJob guard;
      (*job)(idx, size());
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (err && !error_) error_ = err;
      if (--pending_ == 0) cv_done_.notify_one();
    }
  }
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
  if (workers_.empty() || t_in_job) {  // nested call from inside a job: run serially here
    InJob guard;
    fn(0, 1);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    pending_ = int(workers_.size());
    error_ = nullptr;
    ++generation_;
  }
  cv_start_.notify_all();
  std::exception_ptr mine;
  try {
    InJob guard;
    fn(0, size());
  } catch (...) {
    mine = std::current_exception();
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_done_.wait(lk, [&] { return pending_ == 0; });
  job_ = nullptr;
  if (mine) std::rethrow_exception(mine);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t chunks = std::min<int64_t>(size(), (n + grain - 1) / grain);
  if (chunks <= 1 || t_in_job) {
    InJob guard;
    fn(0, n, 0);
    return;
  }
  run_on_all([&](int t, int) {
    if (t >= chunks) return;
    int64_t b = n * t / chunks, e = n * (t + 1) / chunks;
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
