// The instruction-set levels (compute/cpu.hpp): detection rules, STRATA_ISA, and every level's
// kernels against the lane-exact reference. Also built as isa_portable_tests, for plain x86-64
// (-march=x86-64, no AVX in the compiler's baseline): the dispatch must still reach every level
// this CPU has.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <random>
#include <vector>

#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/kernels.hpp"
#include "dataflow/compute/kernels_isa.hpp"

#if defined(STRATA_PORTABLE_TEST) && defined(__AVX2__)
#error "isa_portable_tests must be built without AVX2 in the baseline"
#endif

using namespace strata;

namespace {

std::vector<float> random_vector(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// fn(level, lanes) at every level this CPU has (lanes: the contract's accumulator width there),
// then the level that was active before.
template <class Fn>
void at_every_level(Fn fn) {
  const isa was = active_isa();
  for (int l = 0; l <= int(this_cpu().best()); ++l) {
    REQUIRE(set_active_isa(isa(l)));
    fn(isa(l), isa(l) >= isa::avx512 ? 16 : 8);
  }
  REQUIRE(set_active_isa(was));
}

}  // namespace

TEST_CASE("the kernels run at the best level this CPU has unless STRATA_ISA lowers it") {
  if (!std::getenv("STRATA_ISA")) CHECK(active_isa() == this_cpu().best());
  MESSAGE("cpu: " << this_cpu().brand << ", levels up to " << std::string(to_string(this_cpu().best())));
}

TEST_CASE("matmul at every instruction-set level this CPU has equals its lane reference bit for bit") {
  // kernels_isa.hpp's contract: scalar and AVX2 accumulate in 8 lanes (so they agree with each
  // other), AVX-512 in 16; strided weights and outputs (WeightSlice's prefix views) included.
  std::mt19937 rng(20261207);
  at_every_level([&](isa level, int lanes) {
    for (int rows : {1, 2, 3, 5, 7, 13})
      for (int in : {1, 7, 8, 15, 16, 17, 33, 64, 172})
        for (int out : {1, 3, 4, 6, 9, 70}) {
          const int ldw = in + (out % 2) * 5, ly = out + (rows % 2) * 3;
          auto x = random_vector(size_t(rows * in), rng), W = random_vector(size_t(out * ldw), rng);
          std::vector<float> y(size_t(rows * ly), -7.0f), want(y);
          matmul(y.data(), x.data(), W.data(), rows, in, out, ldw, ly);
          kernels::matmul_reference(lanes, want.data(), x.data(), weight_matrix{dtype::f32, W.data(), size_t(ldw)},
                                    rows, in, out, ly);
          CAPTURE(to_string(level));
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(out);
          REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);  // the padding untouched too
        }
  });
  at_every_level([](isa, int) {  // no rows or no outputs: nothing is touched
    std::vector<float> W(64, 1.0f), x(16, 1.0f);
    matmul(nullptr, x.data(), W.data(), 0, 16, 4);
    matmul(nullptr, nullptr, W.data(), 0, 16, 4);
    matmul(nullptr, x.data(), W.data(), 1, 16, 0);
    std::vector<uint16_t> W16(64, 0x3f80);
    for (dtype t : {dtype::bf16, dtype::f16, dtype::q8}) {
      matmul(nullptr, x.data(), weight_matrix{t, W16.data(), 16}, 0, 16, 4);
      matmul(nullptr, nullptr, weight_matrix{t, W16.data(), 16}, 0, 16, 4);
    }
  });
}

TEST_CASE("bf16 and f16 matmuls at every level equal the f32 matmul of the widened weights bit for bit") {
  // Weights stay 16-bit (half the bytes) and are widened in registers; the result is the f32
  // contract's on the same values, so a model computed in bf16 gives the bits a load-time
  // conversion to f32 gave.
  std::mt19937 rng(7);
  for (dtype t : {dtype::bf16, dtype::f16})
    at_every_level([&](isa level, int lanes) {
      if (t == dtype::bf16 && level >= isa::avx512_bf16) return;  // the bf16-dot contract: test_amx.cpp
      for (int rows : {1, 2, 4, 7, 12})
        for (int in : {1, 8, 15, 16, 17, 64, 100, 172})
          for (int out : {1, 4, 5, 70}) {
            const int ldw = in + (out % 2) * 3, ly = out + (rows % 2) * 2;
            auto x = random_vector(size_t(rows * in), rng), Wf = random_vector(size_t(out * ldw), rng);
            std::vector<uint16_t> W(Wf.size());
            for (size_t i = 0; i < W.size(); ++i) {
              W[i] = t == dtype::bf16 ? f32_to_bf16(Wf[i]) : f32_to_f16(Wf[i] * (i % 5 == 0 ? 1e-5f : 1.0f));
              Wf[i] = t == dtype::bf16 ? bf16_to_f32(W[i]) : f16_to_f32(W[i]);  // the widened weights (subnormal f16s too)
            }
            const weight_matrix wm{t, W.data(), size_t(ldw)};
            std::vector<float> y(size_t(rows * ly), -3.0f), want(y), f32(y);
            matmul(y.data(), x.data(), wm, rows, in, out, ly);
            kernels::matmul_reference(lanes, want.data(), x.data(), wm, rows, in, out, ly);
            matmul(f32.data(), x.data(), Wf.data(), rows, in, out, ldw, ly);
            CAPTURE(to_string(t));
            CAPTURE(to_string(level));
            CAPTURE(rows);
            CAPTURE(in);
            CAPTURE(out);
            REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
            REQUIRE(std::memcmp(y.data(), f32.data(), y.size() * 4) == 0);
          }
    });
}

TEST_CASE("q8 matmul is the same bits at every level and within its stated error of f32") {
  // The q8 contract is one integer sum per 4 values and 8 float lanes everywhere, so every level
  // gives the reference's bits; prefix views that cut a block, rows that end in a short block
  // (172 = 5 * 32 + 12) and a weight of -128 (outside what Strata writes) included.
  std::mt19937 rng(11);
  for (int rows : {1, 2, 3, 5, 9})
    for (int ld : {32, 33, 64, 172})
      for (int in : {1, 12, 31, 32, 33, 64, 129, 172})
        for (int out : {1, 3, 4, 7, 70}) {
          if (in > ld) continue;
          auto x = random_vector(size_t(rows * in), rng), Wf = random_vector(size_t(out * ld), rng);
          std::vector<uint8_t> W(size_t(out) * row_bytes(dtype::q8, size_t(ld)));
          for (int o = 0; o < out; ++o) quantize_q8_row(Wf.data() + size_t(o) * ld, size_t(ld), W.data() + size_t(o) * row_bytes(dtype::q8, size_t(ld)));
          if (out > 2) W[row_bytes(dtype::q8, size_t(ld)) + 2] = 0x80;  // row 1's first value: -128
          const weight_matrix wm{dtype::q8, W.data(), size_t(ld)};
          std::vector<float> want(size_t(rows * out));
          kernels::matmul_reference(8, want.data(), x.data(), wm, rows, in, out);
          at_every_level([&](isa level, int) {
            std::vector<float> y(want.size(), -1.0f);
            matmul(y.data(), x.data(), wm, rows, in, out);
            CAPTURE(to_string(level));
            CAPTURE(rows);
            CAPTURE(in);
            CAPTURE(out);
            REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
          });
          // The error bound: each product's error from rounding x and w to their blocks' steps
          // (half a step each), against the f32 matmul of the dequantised weights.
          std::vector<float> deq(size_t(out * in)), exact(want.size());
          for (int o = 0; o < out; ++o) {
            std::vector<float> row(static_cast<size_t>(ld));
            dequantize_q8_row(W.data() + size_t(o) * row_bytes(dtype::q8, size_t(ld)), size_t(ld), row.data());
            std::copy_n(row.data(), in, deq.data() + size_t(o) * in);
          }
          matmul(exact.data(), x.data(), deq.data(), rows, in, out);
          for (int r = 0; r < rows; ++r)
            for (int o = 0; o < out; ++o) {
              double bound = 1e-5;
              for (int b = 0; b < in; b += 32) {
                float amax = 0.0f;
                for (int k = b; k < std::min(in, b + 32); ++k) amax = std::max(amax, std::fabs(x[size_t(r * in + k)]));
                for (int k = b; k < std::min(in, b + 32); ++k)
                  bound += 0.5 * double(amax) / 127.0 * std::fabs(deq[size_t(o * in + k)]) * 1.0001;
              }
              CAPTURE(r);
              CAPTURE(o);
              CHECK(std::fabs(double(want[size_t(r * out + o)]) - double(exact[size_t(r * out + o)])) <= bound);
            }
        }
}

TEST_CASE("q8 rows: blocks of 32 with an f16 scale, a short last block padded with zeros") {
  std::vector<float> x(45);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i) - 20) * 0.25f;
  std::vector<uint8_t> q(row_bytes(dtype::q8, x.size()), 0xee);
  REQUIRE(q.size() == 2 * 34);
  quantize_q8_row(x.data(), x.size(), q.data());
  uint16_t d16;
  std::memcpy(&d16, q.data(), 2);
  CHECK(f16_to_f32(d16) == doctest::Approx(5.0 / 127).epsilon(1e-3));  // block 0: max |x| = 5
  for (size_t i = 13; i < 32; ++i) CHECK(q[34 + 2 + i] == 0);          // 45 - 32 = 13 values, then zeros
  std::vector<float> back(x.size());
  dequantize_q8_row(q.data(), x.size(), back.data());
  for (size_t i = 0; i < x.size(); ++i) CHECK(std::fabs(back[i] - x[i]) <= 0.5f * 6.0f / 127.0f * 1.01f);
  std::vector<float> zeros(40, 0.0f);
  quantize_q8_row(zeros.data(), zeros.size(), q.data());
  dequantize_q8_row(q.data(), zeros.size(), back.data());
  for (size_t i = 0; i < zeros.size(); ++i) CHECK(back[i] == 0.0f);
}

TEST_CASE("instruction-set levels: the best a CPU has, STRATA_ISA lowers it and never raises it") {
  cpu_info c;
  CHECK(c.best() == isa::scalar);
  c.avx2 = c.fma = true;
  CHECK(c.best() == isa::scalar);  // the OS must save the YMM registers
  c.os_avx = true;
  CHECK(c.best() == isa::avx2);
  c.avx512f = c.avx512bw = c.avx512vl = true;
  CHECK(c.best() == isa::avx2);
  c.os_avx512 = true;
  CHECK(c.best() == isa::avx512);
  c.avx512_bf16 = c.avx512_vnni = true;
  CHECK(c.best() == isa::avx512_bf16);
  c.amx_tile = c.amx_bf16 = c.amx_int8 = true;
  CHECK(c.best() == isa::avx512_bf16);  // without the OS's tile permission
  c.os_amx = true;
  CHECK(c.best() == isa::amx);
  CHECK(*choose_isa(c, "") == isa::amx);
  CHECK(*choose_isa(c, "avx2") == isa::avx2);
  CHECK(*choose_isa(c, "scalar") == isa::scalar);
  c.os_amx = false;
  auto high = choose_isa(c, "amx");
  REQUIRE_FALSE(high);
  CHECK(high.message().find("STRATA_ISA=amx: this CPU runs at most avx512-bf16") != std::string::npos);
  auto bad = choose_isa(c, "avx9");
  REQUIRE_FALSE(bad);
  CHECK(bad.message() ==
        "STRATA_ISA: unknown instruction-set level 'avx9' (expected one of scalar, avx2, avx512, avx512-bf16, amx)");
  for (int l = 0; l < isa_count; ++l) CHECK(*parse_isa(to_string(isa(l))) == isa(l));
  if (this_cpu().best() != isa::amx) {  // a level above this CPU's is refused
    auto above = set_active_isa(isa(int(this_cpu().best()) + 1));
    REQUIRE_FALSE(above);
    CHECK(above.message().find(std::string("this CPU runs at most ") + to_string(this_cpu().best())) == 0);
  }
}

