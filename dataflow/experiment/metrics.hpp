// Serving metrics from a replay: per-request records, latency percentiles, SLO attainment and
// goodput, and an SVG timeline (latency and a step series such as instances) written by hand.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

struct request_record {
  double arrival = 0;      // seconds since replay start
  double first_token = -1; // absolute seconds; < 0: none
  double done = -1;
  int prompt_tokens = 0;
  int output_tokens = 0;   // asked for
  int generated = 0;
  std::vector<double> token_times;  // absolute seconds of every token
  bool ok = false;
  std::string error;
  std::string model;  // the model it asked for, where several are served (bench-serve)
  std::string subnet;  // the subnet the server chose for it (bench-serve --slo-ms)
  std::vector<std::pair<std::string, int32_t>> served;  // its tokens by the subnet that made them
  double ttft() const { return first_token - arrival; }
  double e2e() const { return done - arrival; }
};

struct percentiles {
  size_t n = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
percentiles summarize(std::vector<double> values);

struct slo_spec {
  double ttft_s = 1.0;  // time to first token
  double tbt_s = 0.2;   // mean time between tokens of a request
};

struct replay_summary {
  size_t requests = 0, ok = 0, failed = 0;
  percentiles ttft, tbt, e2e;  // seconds; tbt pools every inter-token gap
  double slo_attainment = 0;   // fraction of all requests that finished within both SLOs
  double goodput = 0;          // such requests per second of replay
  double tokens_per_s = 0;
  double duration = 0;
  std::string table(const std::string& label) const;
};

replay_summary summarize_replay(const std::vector<request_record>& records, const slo_spec& slo);

// A step series for the timeline (e.g. instances or requests in flight over time).
struct step_series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (t, value), value holds until the next point
};

// Writes an SVG: each request's TTFT (and end-to-end latency) at its arrival time, plus step
// series on a second axis.
status write_timeline_svg(const std::string& path, const std::string& title,
                          const std::vector<request_record>& records, const std::vector<step_series>& steps);

// A Prometheus histogram (cumulative buckets), rendered in the text exposition format.
struct prom_histogram {
  std::vector<double> bounds;    // upper bounds, increasing; +Inf is implied
  std::vector<uint64_t> counts;  // per bucket (not cumulative), bounds.size() + 1
  double sum = 0;
  uint64_t count = 0;
  explicit prom_histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // name_bucket{labels,le="..."} ..., name_sum{labels}, name_count{labels}; `labels` like
  // model_name="x" (no braces).
  std::string render(const std::string& name, const std::string& labels) const;
};

// Results as JSON values (seconds; a time that never came is null): shared by every runner's
// --json output.
nlohmann::json json_of(const percentiles& p);
nlohmann::json json_of(const replay_summary& s);
nlohmann::json json_of(const std::vector<request_record>& records);

}  // namespace strata
