#include "dataflow/experiment/trace.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "dataflow/files.hpp"
#include "dataflow/json_fields.hpp"

namespace strata {

expected<trace_format> parse_trace_format(const std::string& s) {
  if (s == "azure") return trace_format::azure;
  if (s == "mooncake") return trace_format::mooncake;
  if (s == "burstgpt") return trace_format::burstgpt;
  return make_error("unknown trace format '" + s + "' (expected azure, mooncake or burstgpt)");
}

expected<trace_format> guess_trace_format(const std::string& path) {
  auto ends = [&](const char* e) {
    std::string x(e);
    return path.size() >= x.size() && path.compare(path.size() - x.size(), x.size(), x) == 0;
  };
  if (ends(".jsonl")) return trace_format::mooncake;
  if (ends(".csv")) {
    auto fd = open_regular(path);  // a FIFO named *.csv must not block
    if (!fd) return make_error("trace " + fd.message());
    char head[9] = {};
    ssize_t n = ::read(*fd, head, 9);
    ::close(*fd);
    return n == 9 && std::string(head, 9) == "TIMESTAMP" ? trace_format::azure : trace_format::burstgpt;
  }
  return make_error(path + ": cannot tell the trace format from the name; pass --format");
}

namespace {

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : line) {
    if (ch == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (ch != '\r') {
      cur.push_back(ch);
    }
  }
  out.push_back(cur);
  return out;
}

bool parse_int(const std::string& s, long& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtol(s.c_str(), &end, 10);
  return *end == '\0' && errno == 0;
}

// Timestamps beyond this many seconds from the epoch (about 300,000 years) are corrupt.
constexpr double max_abs_time = 1e13;

bool parse_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return *end == '\0' && std::isfinite(out) && std::abs(out) <= max_abs_time;
}

// "2023-11-16 18:17:03.9799600" -> seconds since the epoch (UTC).
bool parse_azure_time(const std::string& s, double& out) {
  std::tm tm{};
  int frac_pos = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2d %2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                  &tm.tm_min, &tm.tm_sec, &frac_pos) != 6)
    return false;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  double frac = 0;
  if (s[size_t(frac_pos)] == '.') {
    if (!parse_double("0" + s.substr(size_t(frac_pos)), frac)) return false;
  } else if (s[size_t(frac_pos)] != '\0') {
    return false;
  }
  out = double(timegm(&tm)) + frac;
  return true;
}

}  // namespace

expected<trace> parse_trace(const std::string& text, trace_format f, const std::string& origin, const trace_options& o) {
  trace t;
  std::istringstream in(text);
  std::string line;
  size_t lineno = 0;
  int col_t = -1, col_in = -1, col_out = -1;
  auto bad = [&](const std::string& why) -> status {
    std::string msg = "line " + std::to_string(lineno) + ": " + why;
    if (o.strict) return make_error(origin + ": " + msg);
    t.skipped.push_back(msg);
    if (t.skipped.size() > o.max_skipped)
      return make_error(origin + ": more than " + std::to_string(o.max_skipped) + " bad lines (last: " + msg +
                        "); is this really a " +
                        (f == trace_format::azure ? "azure" : f == trace_format::mooncake ? "mooncake" : "burstgpt") +
                        " trace?");
    return {};
  };
  std::vector<std::pair<double, trace_request>> rows;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (f != trace_format::mooncake && col_t < 0) {  // header (the first line that is not blank)
      auto cols = split_csv(line);
      for (int i = 0; i < int(cols.size()); ++i) {
        const auto& c = cols[size_t(i)];
        if (c == "TIMESTAMP" || c == "Timestamp") col_t = i;
        if (c == "ContextTokens" || c == "Request tokens") col_in = i;
        if (c == "GeneratedTokens" || c == "Response tokens") col_out = i;
      }
      if (col_t < 0 || col_in < 0 || col_out < 0)
        return make_error(origin + ": line " + std::to_string(lineno) + ": header '" + line + "' lacks the timestamp/input/output columns");
      continue;
    }
    ++t.lines;
    double ts = 0;
    long in_tok = 0, out_tok = 0;
    if (f == trace_format::mooncake) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        if (auto st = bad("not a JSON object (truncated?)"); !st) return st.err();
        continue;
      }
      // Typed, bounded reads: a huge or fractional count is a bad line, never a wrapped value.
      json_fields jf(j, "");
      double ms = NAN;
      int64_t a = -1, b = -1;
      status st;
      for (auto* key : {"timestamp", "input_length", "output_length"})
        if (st && !jf.has(key)) st = make_error("needs numeric timestamp, input_length and output_length");
      if (st) st = jf.number("timestamp", ms, -max_abs_time * 1000, max_abs_time * 1000);
      if (st) st = jf.integer("input_length", a, INT64_MIN, INT64_MAX);
      if (st) st = jf.integer("output_length", b, INT64_MIN, INT64_MAX);
      if (!st) {
        if (auto s2 = bad(st.message()); !s2) return s2.err();
        continue;
      }
      ts = ms / 1000.0;  // milliseconds
      in_tok = long(a);
      out_tok = long(b);
    } else {
      auto cols = split_csv(line);
      int need = std::max({col_t, col_in, col_out});
      if (int(cols.size()) <= need) {
        if (auto st = bad("has " + std::to_string(cols.size()) + " columns (truncated?)"); !st) return st.err();
        continue;
      }
      bool ok = f == trace_format::azure ? parse_azure_time(cols[size_t(col_t)], ts)
                                         : parse_double(cols[size_t(col_t)], ts);
      if (!ok || !parse_int(cols[size_t(col_in)], in_tok) || !parse_int(cols[size_t(col_out)], out_tok)) {
        if (auto st = bad("cannot parse '" + line + "'"); !st) return st.err();
        continue;
      }
    }
    if (in_tok < 0 || out_tok < 0) {
      if (auto st = bad("negative token count"); !st) return st.err();
      continue;
    }
    if (in_tok == 0 || out_tok == 0) {  // BurstGPT logs failed requests with 0 tokens
      t.skipped.push_back("line " + std::to_string(lineno) + ": failed request (0 tokens)");
      continue;
    }
    rows.push_back({ts, {0, int(std::min(in_tok, 1L << 30)), int(std::min(out_tok, 1L << 30))}});
  }
  if (rows.empty()) return make_error(origin + ": no requests in the trace");
  std::stable_sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.first < b.first; });
  double t0 = rows.front().first;
  for (auto& [ts, r] : rows) {
    r.t = ts - t0;
    t.requests.push_back(r);
  }
  return t;
}

expected<trace> load_trace(const std::string& path, trace_format f, const trace_options& o) {
  auto text = read_file(path, o.max_bytes, "trace");
  if (!text) return text.err();
  return parse_trace(*text, f, path, o);
}

namespace {

// The time at which the integrated rate reaches u arrivals: rate r0 moving to r1 at `accel`
// (requests/s^2), then constant r1.
double ramp_time(double u, double r0, double r1, double accel) {
  double a = r1 >= r0 ? accel : -accel;
  double t_end = (r1 - r0) / a;
  double u_end = r0 * t_end + a * t_end * t_end / 2;
  if (u >= u_end) return t_end + (u - u_end) / r1;
  return (std::sqrt(std::max(0.0, r0 * r0 + 2 * a * u)) - r0) / a;  // a t^2 / 2 + r0 t = u
}

} // namespace

expected<trace> gamma_trace(const gamma_options& o) {
  if (o.n == 0 || !(o.rate > 0) || !(o.burstiness > 0))
    return make_error("gamma trace needs n > 0, rate > 0 and burstiness > 0");
  if (o.prompt_min < 1 || o.prompt_max < o.prompt_min || o.output_min < 1 || o.output_max < o.output_min)
    return make_error("gamma trace needs 1 <= min <= max for prompt and output lengths");
  if (!(o.ramp_to >= 0) || !(o.ramp_accel > 0) || !std::isfinite(o.ramp_to) || !std::isfinite(o.ramp_accel))
    return make_error("gamma ramp needs ramp_to >= 0 (0: no ramp) and ramp_accel > 0");
  bool ramp = o.ramp_to > 0 && o.ramp_to != o.rate;
  std::mt19937_64 rng(o.seed);
  // Gaps in units of the mean: shape k = burstiness, scale 1/k (mean 1).
  std::gamma_distribution<double> gap(o.burstiness, 1.0 / o.burstiness);
  std::uniform_int_distribution<int> p(o.prompt_min, o.prompt_max), q(o.output_min, o.output_max);
  trace t;
  double u = 0;
  for (size_t i = 0; i < o.n; ++i) {
    if (i > 0) u += gap(rng);
    double now = ramp ? ramp_time(u, o.rate, o.ramp_to, o.ramp_accel) : u / o.rate;
    t.requests.push_back({now, p(rng), q(rng)});
  }
  t.lines = o.n;
  return t;
}

double mean_rate(const trace& t) {
  if (t.requests.size() < 2) return 0;
  double span = t.requests.back().t - t.requests.front().t;
  return span > 0 ? double(t.requests.size() - 1) / span : 0;
}

expected<trace> shape_trace(const trace& in, const shape_options& o) {
  if (!(o.speedup > 0)) return make_error("speedup must be positive");
  if (o.context < 0 || (o.context > 0 && o.context < 2)) return make_error("context must be at least 2 tokens");
  trace out;
  out.skipped = in.skipped;
  out.lines = in.lines;
  for (auto& r : in.requests) {
    if (r.t < o.start) continue;
    if (o.duration > 0 && r.t >= o.start + o.duration) break;
    if (o.max_requests > 0 && out.requests.size() >= o.max_requests) break;
    auto x = r;
    x.t -= o.start;
    if (o.max_prompt > 0) x.prompt_tokens = std::min(x.prompt_tokens, o.max_prompt);
    if (o.max_output > 0) x.output_tokens = std::min(x.output_tokens, o.max_output);
    if (o.context > 0) {
      x.prompt_tokens = std::max(1, std::min(x.prompt_tokens, o.context - 1));
      x.output_tokens = std::max(1, std::min(x.output_tokens, o.context - x.prompt_tokens));
    }
    out.requests.push_back(x);
  }
  if (out.requests.empty()) return make_error("no requests in the chosen window");
  double t0 = out.requests.front().t;
  double speed = o.speedup;
  if (o.target_rate > 0) {
    double r = mean_rate(out);
    if (r > 0) speed = o.target_rate / r;
  }
  for (auto& r : out.requests) r.t = (r.t - t0) / speed;
  return out;
}

}  // namespace strata
