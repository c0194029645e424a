// GEMM efficiency at every instruction-set level this CPU has (compute/cpu.hpp), for f32, bf16,
// f16 and q8 weights (read as stored: bf16/f16 widened in registers, q8 against activations
// quantised per block), against limits measured in the same run:
//   decode (1 row): weight bytes per second over memcpy's traffic (read + write bytes per second;
//     decode reads every weight once per step, so this is the fraction of the memory limit reached;
//     the streaming read of a parallel XOR is printed beside it); the default
//     8192 x 8192 weights, 256 MiB in f32, outsize the caches as a real model's do);
//   batches (R rows): FLOP/s over the level's f32 FMA peak (independent FMA chains on every pool
//     thread, the same vector width as the level's kernel; q8's integer dots have another peak,
//     so its ratio says how it compares with the f32 kernels, not how close it is to its own).
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
  alignas(64) float out[16];  // not _mm512_reduce_add_ps: GCC 12 warns inside it (bug 105593)
  _mm512_store_ps(out, s);
  return out[0];
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

namespace {
int run(int argc, char** argv) {
  auto a = args::parse(argc, argv, 1, {"in", "out", "rows", "reps", "threads"});
  if (!a) return std::fprintf(stderr, "%s\n", a.message().c_str()), 2;
  const int in = int(a->integer("in", 8192, 16, 1 << 16)), out = int(a->integer("out", 8192, 16, 1 << 16));
  const int reps = int(a->integer("reps", 5, 1, 1000));
  const std::vector<int> rows = int_list("rows", a->str("rows", "1,16,64,256"), 1, 65536, "a row count");
  if (rows.empty()) return std::fprintf(stderr, "bench_gemm: --rows names no row count\n"), 2;
  if (a->has("threads")) set_default_threads(size_t(a->integer("threads", 0, 1, 1024)));
  if (auto st = check_isa_env(); !st) return std::fprintf(stderr, "bench_gemm: %s\n", st.message().c_str()), 2;
  const cpu_info& cpu = this_cpu();
  const isa top = active_isa();  // STRATA_ISA caps the levels measured

  int max_rows = *std::max_element(rows.begin(), rows.end());
  std::vector<float> W(size_t(out) * in), x(size_t(max_rows) * in), y(size_t(max_rows) * out);
  for (size_t i = 0; i < W.size(); ++i) W[i] = float(int(i * 2654435761u % 2001) - 1000) * 1e-4f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 40503u % 2001) - 1000) * 1e-3f;
  // The same weights stored in each type.
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16, dtype::q8};
  std::vector<std::vector<uint8_t>> stored;
  for (dtype t : types) {
    std::vector<uint8_t> b(size_t(out) * row_bytes(t, size_t(in)));
    for (int o = 0; o < out; ++o) {
      const float* src = W.data() + size_t(o) * in;
      uint8_t* dst = b.data() + size_t(o) * row_bytes(t, size_t(in));
      for (int i = 0; i < in && t != dtype::q8; ++i) {
        if (t == dtype::f32) std::memcpy(dst + 4 * size_t(i), &src[i], 4);
        uint16_t h = t == dtype::bf16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
        if (t != dtype::f32) std::memcpy(dst + 2 * size_t(i), &h, 2);
      }
      if (t == dtype::q8) quantize_q8_row(src, size_t(in), dst);
    }
    stored.push_back(std::move(b));
  }
  double read = read_gbs(size_t(512) << 20), copy = memcpy_traffic_gbs(size_t(512) << 20);
  std::printf("cpu: %s; flags: %s\n", cpu.brand.c_str(), cpu.flags().c_str());
  std::printf("matmul, weights [%d x %d] (f32 %.0f MiB, bf16/f16 %.0f MiB, q8 %.0f MiB), %zu threads; memory: memcpy "
              "traffic %.1f GB/s, streaming read %.1f GB/s\n",
              out, in, double(stored[0].size()) / (1 << 20), double(stored[1].size()) / (1 << 20),
              double(stored[3].size()) / (1 << 20), default_pool().concurrency(), copy, read);
  std::printf("%-17s %10s", "level", "peak GF/s");
  for (int r : rows) std::printf(" %22s", (r == 1 ? "decode (1 row)" : std::to_string(r) + " rows").c_str());
  std::printf("\n");
  for (int l = 0; l <= int(top); ++l) {
    isa level = isa(l);
    if (auto st = set_active_isa(level); !st) return std::fprintf(stderr, "bench_gemm: %s\n", st.message().c_str()), 1;
    double peak = peak_gflops(level);
    double decode_f32 = 0;
    for (size_t ti = 0; ti < std::size(types); ++ti) {
      const dtype t = types[ti];
      if (level == isa::avx512_bf16 && t != dtype::q8 && t != dtype::bf16) continue;  // AVX-512's kernels again
      if (level == isa::amx && t != dtype::bf16) continue;  // avx512-bf16's kernels again
      std::printf("%-17s %10.1f", (std::string(to_string(level)) + " " + to_string(t)).c_str(), peak);
      const weight_matrix wm{t, stored[ti].data(), size_t(in)};
      double decode = 0;
      for (int r : rows) {
        std::vector<double> times;
        matmul(y.data(), x.data(), wm, r, in, out);  // warm
        for (int k = 0; k < reps; ++k) {
          auto t0 = clk::now();
          matmul(y.data(), x.data(), wm, r, in, out);
          times.push_back(std::chrono::duration<double>(clk::now() - t0).count());
        }
        double sec = median(times);
        if (r == 1) {
          double gbs = double(stored[ti].size()) / sec / 1e9;
          std::printf(" %8.1f GB/s (%4.2fx cp)", gbs, gbs / copy);
          decode = sec;
          if (t == dtype::f32) decode_f32 = sec;
        } else {
          double gf = 2.0 * r * in * out / sec / 1e9;
          std::printf(" %7.1f GF/s (%4.2fx pk)", gf, gf / peak);
        }
      }
      if (t != dtype::f32 && decode_f32 > 0 && decode > 0) std::printf("  decode %.2fx f32's speed", decode_f32 / decode);
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
}  // namespace

int main(int argc, char** argv) { return strata::guarded_main("bench_gemm", argc, argv, run); }
