// The engine's thread pool: a fixed set of workers that run parallel_for over index ranges,
// the calling thread taking part. One global pool sized by --threads (default: all cores).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hxq {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end, thread_index) on disjoint ranges covering [0, n); ranges are at least
  // `grain` long (except the last). Blocks until all are done. Exceptions from fn are rethrown.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain = 1);

  // Runs fn(thread_index, nthreads) once on every thread of the pool. Called from inside a job
  // (nested parallelism), both functions run the work serially on the calling thread.
  void run_on_all(const std::function<void(int, int)>& fn);

 private:
  void worker_loop(int idx);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int, int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// The process-wide pool. set_num_threads() (re)creates it; 0 means all cores.
ThreadPool& pool();
void set_num_threads(int n);
int hardware_threads();

}  // namespace hxq
