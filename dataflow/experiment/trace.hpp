// Request-arrival traces for replay: the real traces in ../shared/data/traces (Azure LLM 2023,
// Mooncake, BurstGPT) and synthetic bursty arrivals (a gamma process, like vLLM's benchmark).
// Every trace becomes a list of (arrival time, prompt tokens, output tokens).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

struct trace_request {
  double t = 0;  // seconds since the first arrival
  int prompt_tokens = 0;
  int output_tokens = 0;
};

enum class trace_format { azure, mooncake, burstgpt };
expected<trace_format> parse_trace_format(const std::string& s);
// azure for *.csv with a TIMESTAMP column, burstgpt for other *.csv, mooncake for *.jsonl.
expected<trace_format> guess_trace_format(const std::string& path);

struct trace {
  std::vector<trace_request> requests;  // sorted by t
  std::vector<std::string> skipped;     // "line N: why", for malformed or failed rows
  size_t lines = 0;                     // data lines read
};

struct trace_options {
  bool strict = false;       // reject the whole trace on the first malformed line
  size_t max_skipped = 100;  // more malformed lines than this: reject (it is not this format)
  uint64_t max_bytes = 4ull << 30;  // a larger file is refused before it is read
};

expected<trace> load_trace(const std::string& path, trace_format f, const trace_options& o = {});
expected<trace> parse_trace(const std::string& text, trace_format f, const std::string& origin,
                            const trace_options& o = {});

// Synthetic arrivals: `n` requests at `rate` per second whose gaps are gamma-distributed with
// shape `burstiness` (1: Poisson; < 1: burstier), lengths uniform in [min, max]. Deterministic.
// A ramp (SuperServe's time-varying traces): with ramp_to > 0 the mean rate moves linearly from
// `rate` to `ramp_to` at `ramp_accel` requests/s^2, then stays there; the gamma gaps are drawn in
// units of the mean and mapped through the integrated rate, so burstiness means the same at
// every rate.
struct gamma_options {
  size_t n = 100;
  double rate = 1.0;
  double burstiness = 1.0;
  double ramp_to = 0;     // 0: a constant rate
  double ramp_accel = 1;  // |d rate / dt| while ramping, requests/s^2
  int prompt_min = 16, prompt_max = 256;
  int output_min = 16, output_max = 128;
  uint64_t seed = 1;
};
expected<trace> gamma_trace(const gamma_options& o);

// Shaping for replay: keep the window [start, start + duration) of the trace (seconds; duration 0
// = to the end), at most max_requests, compress time by `speedup`, and clip lengths so that
// prompt + output fits in `context` (prompt keeps at least 1 token, output at least 1).
struct shape_options {
  double start = 0;
  double duration = 0;
  size_t max_requests = 0;  // 0: all
  double speedup = 1.0;
  double target_rate = 0;   // if > 0: choose speedup so the mean arrival rate is this
  int context = 0;          // 0: no clipping
  int max_prompt = 0;       // extra caps (0: none)
  int max_output = 0;
};
expected<trace> shape_trace(const trace& in, const shape_options& o);

double mean_rate(const trace& t);  // requests per second over the trace's span

}  // namespace strata
