// Limits the CPU benchmarks measure in their own run (machines here are shared and noisy).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataflow/thread_pool.hpp"

namespace strata::bench {

using clk = std::chrono::steady_clock;

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// DRAM traffic of a parallel memcpy (read + write bytes per second), best of 5.
inline double memcpy_traffic_gbs(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = clk::now();
    default_pool().parallel_for(bytes, 1 << 22, [&](size_t s, size_t e) { std::memcpy(b.data() + s, a.data() + s, e - s); });
    double sec = std::chrono::duration<double>(clk::now() - t0).count();
    best = std::max(best, 2.0 * double(bytes) / sec / 1e9);
  }
  if (b[bytes / 2] != 1) std::abort();
  return best;
}

// Pure streaming-read bandwidth (a parallel XOR over 64-bit words, which vectorises with no
// dependency stall), best of 5: the access pattern of decode, which reads every weight once.
inline double read_gbs(size_t bytes) {
  std::vector<uint64_t> a(bytes / 8);
  for (size_t i = 0; i < a.size(); ++i) a[i] = i * 0x9e3779b97f4a7c15ull;
  double best = 0;
  std::atomic<uint64_t> sink{0};
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = clk::now();
    default_pool().parallel_for(a.size(), 1 << 20, [&](size_t s, size_t e) {
      uint64_t acc = 0;
      for (size_t i = s; i < e; ++i) acc ^= a[i];
      sink ^= acc;
    });
    double sec = std::chrono::duration<double>(clk::now() - t0).count();
    best = std::max(best, double(bytes) / sec / 1e9);
  }
  if (sink.load() == 42) std::printf(" ");
  return best;
}

}  // namespace strata::bench
