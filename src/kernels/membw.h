// Machine measurements used to judge the kernels: sustained memory read bandwidth (buffer much
// larger than the last-level cache, read by every pool thread) and peak FP32 FMA throughput.
#pragma once
#include <cstddef>

#include "core/threadpool.h"
#include "kernels/cpu_features.h"

namespace hxq {

// Reads a `bytes`-long buffer (allocated and filled here; use >> L3 size, e.g. 1 GiB) with all
// threads of `pool` (1 MiB chunks handed out dynamically, as the kernels do), `repeats` times
// after one warm-up pass, and returns the median rate in GB/s (1e9 bytes per second). Uses the
// kernel_isa() load width. With cpu_time, each thread's rate is its bytes over its own CPU time
// (CLOCK_THREAD_CPUTIME_ID) and the result is their sum: what the threads get while they run,
// unaffected by time slices lost to other processes on a shared machine.
double measure_read_bandwidth_gbps(size_t bytes, ThreadPool& pool, int repeats = 7, bool cpu_time = false);

// Runs independent FMA chains that fit in registers on all threads of `pool` (chunks handed out
// dynamically) and returns the median rate in GFLOP/s (an FMA counts 2 flops) over `repeats`
// runs, for the vector width of `isa`; cpu_time as above.
double measure_peak_fma_gflops(ThreadPool& pool, Isa isa = best_isa(), int repeats = 7, bool cpu_time = false);

}  // namespace hxq
