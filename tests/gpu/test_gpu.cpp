// GPU kernels against the CPU backend. Without a CUDA device this program says why and exits
// 77, which ctest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "cuda/device.hpp"
#include "dataflow/kernels.hpp"

TEST_CASE("rmsnorm on the GPU matches the CPU kernel") {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  int rows = 37, n = 1000;
  std::vector<float> x(static_cast<size_t>(rows * n)), w(static_cast<size_t>(n)), cpu(x.size()), gpu(x.size());
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  strata::rmsnorm(cpu.data(), x.data(), w.data(), rows, n, 1e-5f);
  auto st = strata::cuda::rmsnorm_host(gpu.data(), x.data(), w.data(), rows, n, 1e-5f);
  REQUIRE_MESSAGE(st, st.message());
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) worst = std::max(worst, double(std::abs(cpu[i] - gpu[i])));
  CHECK(worst < 1e-4);
}

int main(int argc, char** argv) {
  auto devs = strata::cuda::devices();
  if (!devs) {
    std::printf("SKIP: no usable CUDA device (%s)\n", devs.message().c_str());
    return 77;
  }
  for (auto& d : *devs)
    std::printf("device %d: %s, %zu MiB, %d SMs, sm_%d%d\n", d.index, d.name.c_str(), d.total_memory >> 20, d.sm_count,
                d.compute_major, d.compute_minor);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
