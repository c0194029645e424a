// GEMM efficiency at every instruction-set level this CPU has (compute/cpu.hpp), for f32 and bf16
// weights (bf16: read as stored, widened in registers), against limits measured in the same run:
//   decode (1 row): weight bytes per second over memcpy's traffic (read + write bytes per second;
//     decode reads every weight once per step, so this is the fraction of the memory limit reached;
//     the streaming read of a parallel XOR is printed beside it); the default
//     8192 x 8192 weights, 256 MiB in f32, outsize the caches as a real model's do);
//   batches (R rows): FLOP/s over the level's FMA peak (independent FMA chains on every pool
//     thread, the same vector width as the level's kernel).
//
//   build/bin/bench_gemm [--in 8192] [--out 8192] [--rows 1,16,64,256] [--reps 5] [--threads N]
#include <immintrin.h>

#include <climits>
#include <cmath>
#include <string>

#include "apps/args.hpp"
#include "bench/bench_util.hpp"
#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/kernels.hpp"

using namespace strata;
using namespace strata::bench;

namespace {

// n rounds of 12 independent FMA chains; returns a value the compiler must compute.
float fma_scalar(long n) {
  float a[12];
  for (int j = 0; j < 12; ++j) a[j] = 1.0f + float(j) * 1e-3f;
  for (long i = 0; i < n; ++i)
    for (int j = 0; j < 12; ++j) a[j] = std::fma(a[j], 0.999999f, 1e-7f);
  float s = 0;
  for (float v : a) s += v;
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) float fma_avx2(long n) {
  __m256 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm256_set1_ps(1.0f + float(j) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < n; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], m, c);
  alignas(32) float out[8];
  __m256 s = a[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, a[j]);
  _mm256_store_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f"))) float fma_avx512(long n) {
  __m512 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm512_set1_ps(1.0f + float(j) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < n; ++i)
    for (int j = 0; j < 12; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  __m512 s = a[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}
#endif

// The f32 FMA peak of `level` on every pool thread at once, GFLOP/s (best of 3).
double peak_gflops(isa level) {
  const size_t threads = default_pool().concurrency();
  const long n = 20'000'000;
  int lanes = 1;
  float (*fn)(long) = fma_scalar;
#if defined(__x86_64__)
  if (level >= isa::avx512) fn = fma_avx512, lanes = 16;
  else if (level >= isa::avx2) fn = fma_avx2, lanes = 8;
#endif
  double best = 0;
  std::atomic<int> sink{0};
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = clk::now();
    default_pool().parallel_for(threads, 1, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) sink += fn(n) > 1e30f;
    });
    double sec = std::chrono::duration<double>(clk::now() - t0).count();
    best = std::max(best, double(threads) * double(n) * 12 * lanes * 2 / sec / 1e9);
  }
  if (sink.load() == 42) std::printf(" ");
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  auto a = args::parse(argc, argv, 1, {"in", "out", "rows", "reps", "threads"});
  if (!a) return std::fprintf(stderr, "%s\n", a.message().c_str()), 2;
  const int in = int(a->integer("in", 8192, 16, 1 << 16)), out = int(a->integer("out", 8192, 16, 1 << 16));
  const int reps = int(a->integer("reps", 5, 1, 1000));
  std::vector<int> rows;
  try {
    rows = int_list("rows", a->str("rows", "1,16,64,256"), 1, 65536, "a row count");
  } catch (const usage_error& e) {
    return std::fprintf(stderr, "bench_gemm: %s\n", e.what()), 2;
  }
  if (rows.empty()) return std::fprintf(stderr, "bench_gemm: --rows names no row count\n"), 2;
  if (a->has("threads")) set_default_threads(size_t(a->integer("threads", 0, 1, 1024)));
  if (auto st = check_isa_env(); !st) return std::fprintf(stderr, "bench_gemm: %s\n", st.message().c_str()), 2;
  const cpu_info& cpu = this_cpu();
  const isa top = active_isa();  // STRATA_ISA caps the levels measured

  int max_rows = *std::max_element(rows.begin(), rows.end());
  std::vector<float> W(size_t(out) * in), x(size_t(max_rows) * in), y(size_t(max_rows) * out);
  std::vector<uint16_t> W16(W.size());
  for (size_t i = 0; i < W.size(); ++i) {
    W[i] = float(int(i * 2654435761u % 2001) - 1000) * 1e-4f;
    uint32_t bits;
    std::memcpy(&bits, &W[i], 4);
    W16[i] = uint16_t(bits >> 16);
  }
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 40503u % 2001) - 1000) * 1e-3f;
  double read = read_gbs(size_t(512) << 20), copy = memcpy_traffic_gbs(size_t(512) << 20);
  std::printf("cpu: %s; flags: %s\n", cpu.brand.c_str(), cpu.flags().c_str());
  std::printf("matmul, weights [%d x %d] (f32 %.0f MiB, bf16 %.0f MiB), %zu threads; memory: memcpy traffic %.1f GB/s, "
              "streaming read %.1f GB/s\n",
              out, in, double(W.size()) * 4 / (1 << 20), double(W.size()) * 2 / (1 << 20), default_pool().concurrency(),
              copy, read);
  std::printf("%-17s %10s", "level", "peak GF/s");
  for (int r : rows) std::printf(" %22s", (r == 1 ? "decode (1 row)" : std::to_string(r) + " rows").c_str());
  std::printf("\n");
  for (int l = 0; l <= int(top); ++l) {
    isa level = isa(l);
    if (l > 0 && level == isa::avx512_bf16) continue;  // f32 runs the AVX-512 kernel there too
    if (level == isa::amx) continue;
    if (auto st = set_active_isa(level); !st) return std::fprintf(stderr, "bench_gemm: %s\n", st.message().c_str()), 1;
    double peak = peak_gflops(level);
    double decode_f32 = 0, decode_bf16 = 0;
    for (bool bf16 : {false, true}) {
      std::printf("%-17s %10.1f", (std::string(to_string(level)) + (bf16 ? " bf16" : " f32")).c_str(), peak);
      for (int r : rows) {
        auto run = [&] {
          if (bf16) matmul_bf16(y.data(), x.data(), W16.data(), r, in, out);
          else matmul(y.data(), x.data(), W.data(), r, in, out);
        };
        std::vector<double> t;
        run();  // warm
        for (int k = 0; k < reps; ++k) {
          auto t0 = clk::now();
          run();
          t.push_back(std::chrono::duration<double>(clk::now() - t0).count());
        }
        double s = median(t);
        if (r == 1) {
          double gbs = double(W.size()) * (bf16 ? 2 : 4) / s / 1e9;
          std::printf(" %8.1f GB/s (%4.2fx cp)", gbs, gbs / copy);
          if (!bf16) decode_f32 = s;
          else decode_bf16 = s;
        } else {
          double gf = 2.0 * r * in * out / s / 1e9;
          std::printf(" %7.1f GF/s (%4.2fx pk)", gf, gf / peak);
        }
      }
      if (bf16 && decode_f32 > 0 && decode_bf16 > 0) std::printf("  decode %.2fx f32's speed", decode_f32 / decode_bf16);
      std::printf("\n");
      std::fflush(stdout);
    }
  }
  (void)set_active_isa(top);
  std::printf("(medians of %d; cp = memcpy's read + write traffic, pk = the level's FMA peak, both measured in this "
              "run)\n",
              reps);
  return 0;
}
