// The instruction-set levels (compute/cpu.hpp): detection rules, STRATA_ISA, and every level's
// kernels against the lane-exact reference. Also built as isa_portable_tests, for plain x86-64
// (-march=x86-64, no AVX in the compiler's baseline): the dispatch must still reach every level
// this CPU has.
#include <doctest/doctest.h>

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
          kernels::matmul_rows_reference(lanes, want.data(), x.data(), W.data(), rows, in, size_t(ldw), size_t(ly), 0,
                                         out);
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
    matmul_bf16(nullptr, x.data(), W16.data(), 0, 16, 4);
  });
}

TEST_CASE("bf16 matmul at every level equals the f32 matmul of the widened weights bit for bit") {
  // Weights stay 16-bit (half the bytes) and are widened in registers; the result is the f32
  // contract's on the same values, so a model computed in bf16 gives the bits a load-time
  // conversion to f32 gave.
  std::mt19937 rng(7);
  at_every_level([&](isa level, int lanes) {
    for (int rows : {1, 2, 4, 7, 12})
      for (int in : {1, 8, 15, 16, 17, 64, 100, 172})
        for (int out : {1, 4, 5, 70}) {
          const int ldw = in + (out % 2) * 3, ly = out + (rows % 2) * 2;
          auto x = random_vector(size_t(rows * in), rng), Wf = random_vector(size_t(out * ldw), rng);
          std::vector<uint16_t> W(Wf.size());
          for (size_t i = 0; i < W.size(); ++i) {
            uint32_t bits;
            std::memcpy(&bits, &Wf[i], 4);
            W[i] = uint16_t(bits >> 16);  // truncated: any bf16 value will do
            bits = uint32_t(W[i]) << 16;
            std::memcpy(&Wf[i], &bits, 4);  // the widened weights
          }
          std::vector<float> y(size_t(rows * ly), -3.0f), want(y), f32(y);
          matmul_bf16(y.data(), x.data(), W.data(), rows, in, out, ldw, ly);
          kernels::matmul_bf16_rows_reference(lanes, want.data(), x.data(), W.data(), rows, in, size_t(ldw),
                                              size_t(ly), 0, out);
          matmul(f32.data(), x.data(), Wf.data(), rows, in, out, ldw, ly);
          CAPTURE(to_string(level));
          CAPTURE(rows);
          CAPTURE(in);
          CAPTURE(out);
          REQUIRE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
          REQUIRE(std::memcmp(y.data(), f32.data(), y.size() * 4) == 0);
        }
  });
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

