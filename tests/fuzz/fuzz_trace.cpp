// Request traces (Azure and BurstGPT CSV, Mooncake JSONL), then shaped as a replay shapes them.
#include <cmath>

#include "dataflow/experiment/trace.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  for (auto f : {strata::trace_format::azure, strata::trace_format::burstgpt, strata::trace_format::mooncake}) {
    auto t = strata::parse_trace(text, f, "fuzz");
    if (!t) continue;
    for (auto& r : t->requests)
      if (!std::isfinite(r.t) || r.prompt_tokens < 1 || r.output_tokens < 1) __builtin_trap();
    strata::shape_options so;
    so.context = 512;
    so.max_requests = 1000;
    so.target_rate = 3;
    auto s = strata::shape_trace(*t, so);
    if (s)
      for (auto& r : s->requests)
        if (r.prompt_tokens + r.output_tokens > 512) __builtin_trap();
  }
  return 0;
}
