// The spinning thread pool: every share runs exactly once under many back-to-back jobs, with and
// without the futex (sleeping) path, errors propagate, nested calls run inline, several outside
// threads may submit, and FnRef calls what it refers to without copying it.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/threadpool.h"

using namespace hxq;

namespace {

TEST(ThreadPoolFast, FnRefCallsTheReferencedObject) {
  int calls = 0;
  auto f = [&](int a, int b) { calls += a + b; };
  FnRef<void(int, int)> r = f;
  r(1, 2);
  r(3, 4);
  EXPECT_EQ(calls, 10);
  struct Counter {
    int n = 0;
    int operator()(int x) { return n += x; }
  } c;
  FnRef<int(int)> rc = c;
  EXPECT_EQ(rc(5), 5);
  EXPECT_EQ(rc(2), 7);
  EXPECT_EQ(c.n, 7);  // the object itself, not a copy
}

void many_jobs(ThreadPool& p, int jobs) {
  std::vector<std::atomic<int>> hits(64);
  for (int j = 0; j < jobs; ++j) {
    const int64_t n = 1 + j % 64;
    for (auto& h : hits) h.store(0, std::memory_order_relaxed);
    p.parallel_for(n, [&](int64_t b, int64_t e, int share) {
      ASSERT_GE(share, 0);
      ASSERT_LT(share, p.size());
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
    });
    for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(hits[size_t(i)].load(), i < n ? 1 : 0) << "job " << j;
    std::atomic<int> shares{0}, mask{0};
    p.run_on_all([&](int t, int nt) {
      ASSERT_EQ(nt, p.size());
      shares.fetch_add(1);
      mask.fetch_or(1 << t);
    });
    ASSERT_EQ(shares.load(), p.size());
    ASSERT_EQ(mask.load(), (1 << p.size()) - 1);
  }
}

TEST(ThreadPoolFast, BackToBackJobsSpinning) {
  ThreadPool p(3);
  many_jobs(p, 3000);
}

TEST(ThreadPoolFast, BackToBackJobsSleeping) {
  ThreadPool p(3);
  p.set_spin_us(0);  // every wait goes through the futex
  EXPECT_EQ(p.spin_us(), 0);
  many_jobs(p, 1000);
  // Jobs after the workers have gone to sleep.
  p.set_spin_us(50);
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    many_jobs(p, 3);
  }
}

TEST(ThreadPoolFast, GrainKeepsSmallWorkOnTheCaller) {
  ThreadPool p(4);
  int calls = 0;  // not atomic: a single call must happen, on this thread
  p.parallel_for(15, [&](int64_t b, int64_t e, int share) {
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 15);
    EXPECT_EQ(share, 0);
    ++calls;
  }, 8);
  EXPECT_EQ(calls, 1);
  std::atomic<int64_t> covered{0}, ranges{0};
  p.parallel_for(100, [&](int64_t b, int64_t e, int) {
    EXPECT_GE(e - b, 30);
    covered += e - b;
    ranges++;
  }, 30);
  EXPECT_EQ(covered.load(), 100);
  EXPECT_EQ(ranges.load(), 3);
}

TEST(ThreadPoolFast, ErrorsPropagateAndThePoolStaysUsable) {
  ThreadPool p(2);
  for (int i = 0; i < 50; ++i) {
    EXPECT_THROW(p.run_on_all([&](int t, int) {
      if (t == i % 2) throw std::runtime_error("boom");
    }), std::runtime_error);
    int64_t sum = 0;
    std::atomic<int64_t> asum{0};
    p.parallel_for(1000, [&](int64_t b, int64_t e, int) {
      for (int64_t k = b; k < e; ++k) asum += k;
    });
    sum = asum.load();
    EXPECT_EQ(sum, 999 * 1000 / 2);
  }
}

TEST(ThreadPoolFast, NestedCallsRunInline) {
  ThreadPool p(3);
  std::atomic<int> total{0};
  p.run_on_all([&](int, int) {
    p.run_on_all([&](int t, int n) {
      EXPECT_EQ(t, 0);
      EXPECT_EQ(n, 1);
      total++;
    });
  });
  EXPECT_EQ(total.load(), 3);
}

TEST(ThreadPoolFast, SeveralSubmittingThreads) {
  ThreadPool p(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> th;
  for (int k = 0; k < 3; ++k)
    th.emplace_back([&] {
      for (int j = 0; j < 300; ++j)
        p.parallel_for(10, [&](int64_t b, int64_t e, int) { total += e - b; });
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(total.load(), 3 * 300 * 10);
}

TEST(ThreadPoolFast, DestroyWhileWorkersSleepOrSpin) {
  for (int spin : {0, 1000}) {
    ThreadPool p(4);
    p.set_spin_us(spin);
    p.parallel_for(8, [](int64_t, int64_t, int) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }  // joins without hanging
  SUCCEED();
}

}  // namespace
