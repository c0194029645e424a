// What this CPU can run, and the instruction-set level the kernels run at. Detected once from
// CPUID and the OS's saved register state (XGETBV; for AMX the tile data permission asked of
// Linux with arch_prctl), so one binary built for any x86-64 reaches the fastest kernels it has
// (like llama.cpp's GGML_CPU_ALL_VARIANTS). STRATA_ISA=<level> lowers the level (never raises
// it past what the CPU has): the AVX2 path stays testable and measurable on an AVX-512 machine.
//
// Determinism: at one level every kernel gives bitwise identical results for any batching and
// sharding. Across levels f32 results differ in the last bits (AVX-512 accumulates in 16 lanes
// where scalar and AVX2 accumulate in 8; scalar and AVX2 are bit-identical), so a cluster whose
// nodes run different levels agrees on greedy tokens up to float noise, not bit for bit.
#pragma once

#include <cstdint>
#include <string>

#include "dataflow/expected.hpp"

namespace strata {

// Ordered: each level includes the ones before it.
enum class isa : uint8_t {
  scalar = 0,       // portable C++ (the reference the others are tested against)
  avx2 = 1,         // AVX2 + FMA
  avx512 = 2,       // AVX-512 F/BW/VL
  avx512_bf16 = 3,  // + AVX512_BF16 and AVX512_VNNI (Zen 4, Cooper Lake, Sapphire Rapids)
  amx = 4,          // + AMX-TILE/BF16/INT8 with the OS's permission (Sapphire Rapids)
};
constexpr int isa_count = 5;
const char* to_string(isa level);
expected<isa> parse_isa(const std::string& name);  // "scalar", "avx2", "avx512", "avx512-bf16", "amx"

struct cpu_info {
  std::string vendor, brand;
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512_bf16 = false, avx512_vnni = false;
  bool avx_vnni = false, amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;  // the OS saves those registers (AMX: permitted)
  // The highest level whose instructions the CPU has and the OS enables.
  isa best() const;
  // The flags above that are set, space-separated (what `strata inspect --cpu` prints).
  std::string flags() const;
};

// This machine's CPU, detected on first use.
const cpu_info& this_cpu();

// The level for `cpu` given an override (STRATA_ISA's value; empty: none): the CPU's best, or the
// override when the CPU has it; an unknown name or a level above the CPU's is an error naming it.
expected<isa> choose_isa(const cpu_info& cpu, const std::string& override_name);

// The level the kernels run at: choose_isa(this_cpu(), $STRATA_ISA) on first use. A bad
// STRATA_ISA is reported once on stderr and the CPU's best is used; commands call check_isa_env()
// at start to fail on it instead.
isa active_isa();
status check_isa_env();
// Runs the kernels at `level` from now on (tests and benchmarks compare levels); an error when
// this CPU lacks it.
status set_active_isa(isa level);

}  // namespace strata
