// The amx level's bf16 matmul (kernels_amx.hpp): its tile walk runs here on an emulator of
// TDPBF16PS as Intel's manual states it, so the packing, blocking and tails are checked exactly on
// any CPU; on a CPU with AMX the same checks run the CPU's tiles against the contract's bound.
// Also built into isa_portable_tests.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/kernels.hpp"
#include "dataflow/compute/kernels_amx.hpp"
#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/model/model.hpp"
#include "dataflow/model/model_io.hpp"

using namespace strata;

namespace {

float flush(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }

// One step of TDPBF16PS on one element: an f32 FMA with denormals in and out flushed to zero,
// rounding to nearest even.
float tile_step(float acc, uint16_t a, uint16_t b) { return flush(std::fma(flush(bf16_to_f32(a)), flush(bf16_to_f32(b)), acc)); }

// Eight 16 x 64-byte tiles and TDPBF16PS in the order of the manual's intrinsic guide: for each
// pair k, acc += a[2k] * b[2k], then acc += a[2k + 1] * b[2k + 1].
struct emulated_tiles {
  alignas(64) uint8_t t[8][1024] = {};
  void config() {}
  void release() {}
  void zero_c() { std::memset(t, 0, 4 * sizeof t[0]); }
  void load(int tile, const void* p, size_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(t[tile] + 64 * r, static_cast<const uint8_t*>(p) + size_t(r) * stride, 64);
  }
  void load_a(int i, const void* p, size_t stride) { load(4 + i, p, stride); }
  void load_b(int j, const void* p) { load(6 + j, p, 64); }
  uint16_t bf16_at(int tile, int row, int i) const {
    uint16_t v;
    std::memcpy(&v, t[tile] + 64 * row + 2 * i, 2);
    return v;
  }
  void dp(int c, int a, int b) {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float acc;
        std::memcpy(&acc, t[c] + 64 * m + 4 * n, 4);
        for (int k = 0; k < 16; ++k)
          for (int h = 0; h < 2; ++h) acc = tile_step(acc, bf16_at(a, m, 2 * k + h), bf16_at(b, k, 2 * n + h));
        std::memcpy(t[c] + 64 * m + 4 * n, &acc, 4);
      }
  }
  void dot(int na, int nb) {
    for (int i = 0; i < na; ++i)
      for (int j = 0; j < nb; ++j) dp(2 * i + j, 4 + i, 6 + j);
  }
  void store_c(int i, int j, float* p) { std::memcpy(p, t[2 * i + j], 1024); }
};

void emulated_bf16_tiles(float* y, const uint32_t* xp, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                         int o_begin, int o_end) {
  emulated_tiles u;
  kernels::amx_bf16_rows(u, y, xp, W, rows, in, ldw, ly, o_begin, o_end);
}

kernels::level_kernels with_tiles(kernels::bf16_tiles_fn fn) {
  kernels::level_kernels k = kernels::scalar_kernels();
  k.bf16_tiles = fn;
  return k;
}

struct case_data {
  int rows, in, out, ldw;
  std::vector<float> x, Wf;  // Wf: the bf16 weights widened
  std::vector<uint16_t> W;
};

case_data make_case(int rows, int in, int out, std::mt19937& rng, bool denormals = false) {
  case_data c{rows, in, out, in + (out % 2) * 3, {}, {}, {}};
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  c.x.resize(size_t(rows * in));
  for (auto& v : c.x) v = d(rng);
  c.W.resize(size_t(out * c.ldw));
  c.Wf.resize(c.W.size());
  for (size_t i = 0; i < c.W.size(); ++i) {
    // NaN between rows (ldw > in): a kernel that reads past a row's `in` values shows it
    c.W[i] = int(i % size_t(c.ldw)) >= in                ? uint16_t(0x7fc0)
             : denormals && i % 7 == 0 ? uint16_t(0x0001 + i % 0x7f)
                                       : f32_to_bf16(d(rng));
    c.Wf[i] = bf16_to_f32(c.W[i]);
  }
  if (denormals)
    for (size_t i = 0; i < c.x.size(); i += 5) c.x[i] = 1e-39f;  // rounds to a bf16 denormal
  return c;
}

// The AMX tile contract on one output with the emulator's order: 32-value steps, zeros past `in`.
float tile_reference(const uint16_t* w, const uint16_t* xb, int in) {
  float acc = 0.0f;
  for (int c = 0; c < (in + 31) / 32; ++c)
    for (int i = 32 * c; i < 32 * c + 32; ++i) acc = tile_step(acc, i < in ? w[i] : 0, i < in ? xb[i] : 0);
  return acc;
}

// The bf16-dot bound (kernels_isa.hpp) and row independence, for any bf16 matmul `mm`.
template <class Mm>
void check_bf16_dot_contract(Mm mm, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int rows : {1, 3, 17, 33})
    for (int in : {1, 31, 32, 33, 100, 172})
      for (int out : {1, 5, 40}) {
        case_data c = make_case(rows, in, out, rng);
        const weight_matrix wm{dtype::bf16, c.W.data(), size_t(c.ldw)};
        std::vector<float> y(static_cast<size_t>(rows * out)), one(static_cast<size_t>(out));
        mm(y.data(), c.x.data(), wm, rows, in, out);
        CAPTURE(rows);
        CAPTURE(in);
        CAPTURE(out);
        for (int r = 0; r < rows; ++r) {
          mm(one.data(), c.x.data() + size_t(r) * in, wm, 1, in, out);
          REQUIRE(std::memcmp(one.data(), y.data() + size_t(r) * out, size_t(out) * 4) == 0);
          for (int o = 0; o < out; ++o) {
            double exact = 0, mag = 0;
            for (int k = 0; k < in; ++k) {
              const double p = double(c.Wf[size_t(o * c.ldw + k)]) * double(c.x[size_t(r * in + k)]);
              exact += p;
              mag += std::fabs(p);
            }
            CHECK(std::fabs(double(y[size_t(r * out + o)]) - exact) <=
                  mag * (std::ldexp(1.0, -8) + in * std::ldexp(1.0, -23)) + 1e-6);
          }
        }
      }
}

}  // namespace

TEST_CASE("AMX bf16 tiles on the emulator: packing, 32-row blocks and every tail give the instruction's steps exactly") {
  std::mt19937 rng(2026);
  const kernels::level_kernels k = with_tiles(emulated_bf16_tiles);
  for (bool denormals : {false, true})
    for (int rows : {1, 5, 16, 17, 33})
      for (int in : {1, 31, 32, 33, 64, 100})
        for (int out : {1, 15, 16, 17, 33, 40}) {
          case_data c = make_case(rows, in, out, rng, denormals);
          const int ly = out + 2;
          std::vector<float> y(size_t(rows * ly), -5.0f);
          kernels::matmul_with(k, y.data(), c.x.data(), weight_matrix{dtype::bf16, c.W.data(), size_t(c.ldw)}, rows,
                               in, out, ly);
          std::vector<uint16_t> xb(c.x.size());
          convert_from_f32(dtype::bf16, c.x.data(), xb.data(), xb.size());
          CAPTURE(denormals);
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(out);
          for (int r = 0; r < rows; ++r) {
            for (int o = 0; o < out; ++o) {
              const float want = tile_reference(c.W.data() + size_t(o) * c.ldw, xb.data() + size_t(r) * in, in);
              const float got = y[size_t(r) * ly + size_t(o)];
              CAPTURE(r);
              CAPTURE(o);
              REQUIRE(std::memcmp(&got, &want, 4) == 0);
            }
            CHECK(y[size_t(r) * ly + size_t(out)] == -5.0f);  // the padding between rows untouched
            CHECK(y[size_t(r) * ly + size_t(out) + 1] == -5.0f);
          }
        }
}

TEST_CASE("AMX bf16 tiles: any split of the weight rows gives the same bits, on the emulator and on AMX CPUs") {
  std::vector<kernels::bf16_tiles_fn> fns{emulated_bf16_tiles};
#if defined(__x86_64__)
  if (this_cpu().best() >= isa::amx) fns.push_back(kernels::amx_kernels().bf16_tiles);
#endif
  std::mt19937 rng(77);
  for (auto fn : fns)
    for (int rows : {1, 18})
      for (int in : {33, 96}) {
        const int out = 50;
        case_data c = make_case(rows, in, out, rng);
        std::vector<uint32_t> xp(kernels::bf16_tile_words(rows, in));
        kernels::pack_bf16_tiles(c.x.data(), rows, in, xp.data(), false);
        std::vector<float> whole(size_t(rows * out)), parts(whole.size());
        fn(whole.data(), xp.data(), c.W.data(), rows, in, size_t(c.ldw), size_t(out), 0, out);
        for (int cut : {1, 7, 16, 17, 31, 49}) {
          fn(parts.data(), xp.data(), c.W.data(), rows, in, size_t(c.ldw), size_t(out), 0, cut);
          fn(parts.data(), xp.data(), c.W.data(), rows, in, size_t(c.ldw), size_t(out), cut, out);
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(cut);
          REQUIRE(std::memcmp(whole.data(), parts.data(), whole.size() * 4) == 0);
        }
      }
}

TEST_CASE("bf16 dot products hold their bound and each row's bits in any batch at every level that has them") {
  // kernels_isa.hpp: the bits are the instructions' (vdpbf16ps, TDPBF16PS), so the test holds
  // them to what the contracts promise: a row alone gives the bits it gives in any batch, and the
  // result is within rounding x to bf16 (2^-8 relative per value) and f32 sums of the exact dot.
  const kernels::level_kernels emulated = with_tiles(emulated_bf16_tiles);
  check_bf16_dot_contract(
      [&](float* y, const float* x, const weight_matrix& w, int rows, int in, int out) {
        kernels::matmul_with(emulated, y, x, w, rows, in, out);
      },
      13);
  const isa was = active_isa();
  for (isa level : {isa::avx512_bf16, isa::amx}) {
    if (this_cpu().best() < level) {
      MESSAGE("this CPU has no " << std::string(to_string(level)) << " level: its bf16 kernel is not run here");
      continue;
    }
    REQUIRE(set_active_isa(level));
    const std::string level_name = to_string(level);
    CAPTURE(level_name);
    check_bf16_dot_contract(
        [](float* y, const float* x, const weight_matrix& w, int rows, int in, int out) {
          matmul(y, x, w, rows, in, out);
        },
        14);
  }
  REQUIRE(set_active_isa(was));
}
