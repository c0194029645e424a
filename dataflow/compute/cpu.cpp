#include "dataflow/compute/cpu.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define STRATA_X86 1
#endif

namespace strata {

namespace {

const char* const isa_names[isa_count] = {"scalar", "avx2", "avx512", "avx512-bf16", "amx"};

#if defined(STRATA_X86)
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux hands out AMX tile state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM).
bool request_amx() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
  return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
  return false;
#endif
}

cpu_info detect() {
  cpu_info c;
  unsigned a = 0, b = 0, cx = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return c;
  unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &cx, 4);
  c.vendor = vendor;
  if (__get_cpuid(0x80000000, &a, &b, &cx, &d) && a >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &cx, &d);
      std::memcpy(brand + 16 * i, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &cx, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    c.brand = brand;
    while (!c.brand.empty() && c.brand.back() == ' ') c.brand.pop_back();
    while (!c.brand.empty() && c.brand.front() == ' ') c.brand.erase(0, 1);
  }
  __get_cpuid(1, &a, &b, &cx, &d);
  bool osxsave = cx & (1u << 27), avx = cx & (1u << 28);
  c.fma = cx & (1u << 12);
  c.f16c = cx & (1u << 29);
  uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  c.os_avx = avx && (xcr0 & 0x6) == 0x6;
  c.os_avx512 = c.os_avx && (xcr0 & 0xe0) == 0xe0;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, cx, d);
    unsigned sub_leaves = a;
    c.avx2 = b & (1u << 5);
    c.avx512f = b & (1u << 16);
    c.avx512bw = b & (1u << 30);
    c.avx512vl = b & (1u << 31);
    c.avx512_vnni = cx & (1u << 11);
    c.amx_bf16 = d & (1u << 22);
    c.amx_tile = d & (1u << 24);
    c.amx_int8 = d & (1u << 25);
    if (sub_leaves >= 1) {
      __cpuid_count(7, 1, a, b, cx, d);
      c.avx_vnni = a & (1u << 4);
      c.avx512_bf16 = a & (1u << 5);
    }
  }
  c.os_amx = c.amx_tile && (xcr0 & 0x60000) == 0x60000 && request_amx();
  return c;
}
#else
cpu_info detect() { return {}; }
#endif

std::atomic<int> active{-1};
std::once_flag active_once;

expected<isa> isa_from_env() {
  const char* env = std::getenv("STRATA_ISA");
  return choose_isa(this_cpu(), env ? env : "");
}

void init_active() {
  std::call_once(active_once, [] {
    auto level = isa_from_env();
    if (!level) {
      std::fprintf(stderr, "strata: %s; using %s\n", level.message().c_str(), to_string(this_cpu().best()));
      level = this_cpu().best();
    }
    int none = -1;
    active.compare_exchange_strong(none, int(*level));  // set_active_isa may have come first
  });
}

}  // namespace

const char* to_string(isa level) { return isa_names[int(level)]; }

expected<isa> parse_isa(const std::string& name) {
  for (int i = 0; i < isa_count; ++i)
    if (name == isa_names[i]) return isa(i);
  std::string all;
  for (int i = 0; i < isa_count; ++i) all += std::string(i ? ", " : "") + isa_names[i];
  return make_error("unknown instruction-set level '" + name + "' (expected one of " + all + ")");
}

isa cpu_info::best() const {
  if (!(os_avx && avx2 && fma)) return isa::scalar;
  if (!(os_avx512 && avx512f && avx512bw && avx512vl)) return isa::avx2;
  if (!(avx512_bf16 && avx512_vnni)) return isa::avx512;
  if (!(os_amx && amx_tile && amx_bf16 && amx_int8)) return isa::avx512_bf16;
  return isa::amx;
}

std::string cpu_info::flags() const {
  std::pair<bool, const char*> all[] = {{avx2, "avx2"},           {fma, "fma"},
                                        {f16c, "f16c"},           {avx512f, "avx512f"},
                                        {avx512bw, "avx512bw"},   {avx512vl, "avx512vl"},
                                        {avx512_bf16, "avx512_bf16"}, {avx512_vnni, "avx512_vnni"},
                                        {avx_vnni, "avx_vnni"},   {amx_tile, "amx_tile"},
                                        {amx_bf16, "amx_bf16"},   {amx_int8, "amx_int8"},
                                        {os_avx, "os:avx"},       {os_avx512, "os:avx512"},
                                        {os_amx, "os:amx"}};
  std::string out;
  for (auto& [on, name] : all)
    if (on) out += std::string(out.empty() ? "" : " ") + name;
  return out.empty() ? "(none)" : out;
}

const cpu_info& this_cpu() {
  static const cpu_info c = detect();
  return c;
}

expected<isa> choose_isa(const cpu_info& cpu, const std::string& override_name) {
  if (override_name.empty()) return cpu.best();
  auto level = parse_isa(override_name);
  if (!level) return make_error("STRATA_ISA: " + level.message());
  if (*level > cpu.best())
    return make_error("STRATA_ISA=" + override_name + ": this CPU runs at most " + to_string(cpu.best()) +
                      " (flags: " + cpu.flags() + ")");
  return *level;
}

isa active_isa() {
  int v = active.load(std::memory_order_relaxed);
  if (v < 0) {
    init_active();
    v = active.load(std::memory_order_relaxed);
  }
  return isa(v);
}

status check_isa_env() {
  if (auto level = isa_from_env(); !level) return level.err();
  return {};
}

status set_active_isa(isa level) {
  if (level > this_cpu().best())
    return make_error(std::string("this CPU runs at most ") + to_string(this_cpu().best()) + ", not " +
                      to_string(level));
  init_active();
  active.store(int(level), std::memory_order_relaxed);
  return {};
}

}  // namespace strata
