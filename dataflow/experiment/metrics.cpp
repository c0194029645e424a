#include "dataflow/experiment/metrics.hpp"

#include "dataflow/files.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace strata {

percentiles summarize(std::vector<double> v) {
  percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(std::ceil(q * double(v.size()))) - 1)]; };
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / double(v.size());
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

replay_summary summarize_replay(const std::vector<request_record>& records, const slo_spec& slo) {
  replay_summary s;
  s.requests = records.size();
  std::vector<double> ttft, tbt, e2e;
  double end = 0, start = 1e300;
  size_t good = 0, tokens = 0;
  for (auto& r : records) {
    start = std::min(start, r.arrival);
    if (!r.ok) {
      ++s.failed;
      continue;
    }
    ++s.ok;
    end = std::max(end, r.done);
    tokens += size_t(r.generated);
    if (r.first_token >= 0) ttft.push_back(r.ttft());
    e2e.push_back(r.e2e());
    double gaps = 0;
    for (size_t i = 1; i < r.token_times.size(); ++i) {
      tbt.push_back(r.token_times[i] - r.token_times[i - 1]);
      gaps += r.token_times[i] - r.token_times[i - 1];
    }
    double mean_tbt = r.token_times.size() > 1 ? gaps / double(r.token_times.size() - 1) : 0;
    if (r.first_token >= 0 && r.ttft() <= slo.ttft_s && mean_tbt <= slo.tbt_s) ++good;
  }
  s.ttft = summarize(ttft);
  s.tbt = summarize(tbt);
  s.e2e = summarize(e2e);
  s.duration = records.empty() ? 0 : std::max(0.0, end - start);
  s.slo_attainment = records.empty() ? 0 : double(good) / double(records.size());
  s.goodput = s.duration > 0 ? double(good) / s.duration : 0;
  s.tokens_per_s = s.duration > 0 ? double(tokens) / s.duration : 0;
  return s;
}

std::string replay_summary::table(const std::string& label) const {
  char buf[512];
  std::ostringstream os;
  std::snprintf(buf, sizeof buf, "%s: %zu requests (%zu ok, %zu failed) in %.2f s, %.1f tokens/s\n", label.c_str(),
                requests, ok, failed, duration, tokens_per_s);
  os << buf;
  std::snprintf(buf, sizeof buf, "  %-6s %9s %9s %9s %9s %9s\n", "ms", "mean", "p50", "p90", "p99", "max");
  os << buf;
  for (auto [name, p] : {std::pair<const char*, const percentiles*>{"TTFT", &ttft}, {"TBT", &tbt}, {"E2E", &e2e}}) {
    std::snprintf(buf, sizeof buf, "  %-6s %9.1f %9.1f %9.1f %9.1f %9.1f\n", name, p->mean * 1e3, p->p50 * 1e3,
                  p->p90 * 1e3, p->p99 * 1e3, p->max * 1e3);
    os << buf;
  }
  std::snprintf(buf, sizeof buf, "  SLO attainment %.1f%%, goodput %.2f req/s\n", 100 * slo_attainment, goodput);
  os << buf;
  return os.str();
}

status write_timeline_svg(const std::string& path, const std::string& title,
                          const std::vector<request_record>& records, const std::vector<step_series>& steps) {
  const double W = 900, H = 420, L = 70, R = 70, T = 40, B = 50;
  double tmax = 1e-9, lmax = 1e-9, smax = 1e-9;
  for (auto& r : records) {
    tmax = std::max(tmax, r.arrival);
    if (r.ok) lmax = std::max(lmax, r.e2e());
  }
  for (auto& s : steps)
    for (auto& [t, v] : s.points) {
      tmax = std::max(tmax, t);
      smax = std::max(smax, v);
    }
  auto X = [&](double t) { return L + (W - L - R) * t / tmax; };
  auto Y = [&](double l) { return H - B - (H - T - B) * l / lmax; };
  auto Y2 = [&](double v) { return H - B - (H - T - B) * v / (smax * 1.1); };
  std::ostringstream os;
  os << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
     << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  os << "<text x='" << W / 2 << "' y='20' text-anchor='middle' font-size='14'>" << title << "</text>\n";
  os << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
  os << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  if (!steps.empty()) {
    os << "<line x1='" << W - R << "' y1='" << T << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
    for (int i = 0; i <= 4; ++i) {
      double v = smax * 1.1 * i / 4;
      char b[64];
      std::snprintf(b, sizeof b, "%.1f", v);
      os << "<text x='" << W - R + 6 << "' y='" << Y2(v) + 4 << "'>" << b << "</text>\n";
    }
  }
  for (int i = 0; i <= 4; ++i) {
    double l = lmax * i / 4, t = tmax * i / 4;
    char b[64];
    std::snprintf(b, sizeof b, "%.0f", l * 1e3);
    os << "<text x='" << L - 6 << "' y='" << Y(l) + 4 << "' text-anchor='end'>" << b << "</text>\n";
    std::snprintf(b, sizeof b, "%.1f", t);
    os << "<text x='" << X(t) << "' y='" << H - B + 16 << "' text-anchor='middle'>" << b << "</text>\n";
  }
  os << "<text x='" << (L + W - R) / 2 << "' y='" << H - 12 << "' text-anchor='middle'>arrival time (s)</text>\n";
  os << "<text x='16' y='" << (T + H - B) / 2 << "' transform='rotate(-90 16 " << (T + H - B) / 2
     << ")' text-anchor='middle'>latency (ms): TTFT blue, end-to-end grey</text>\n";
  for (auto& r : records) {
    if (!r.ok) {
      os << "<text x='" << X(r.arrival) << "' y='" << T + 10 << "' fill='red' text-anchor='middle'>x</text>\n";
      continue;
    }
    os << "<circle cx='" << X(r.arrival) << "' cy='" << Y(r.e2e()) << "' r='2' fill='#aaa'/>\n";
    if (r.first_token >= 0) os << "<circle cx='" << X(r.arrival) << "' cy='" << Y(r.ttft()) << "' r='2' fill='#1f77b4'/>\n";
  }
  const char* colors[] = {"#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
  for (size_t si = 0; si < steps.size(); ++si) {
    auto& s = steps[si];
    if (s.points.empty()) continue;
    os << "<polyline fill='none' stroke='" << colors[si % 4] << "' stroke-width='2' points='";
    double prev = s.points.front().second;
    for (auto& [t, v] : s.points) {
      os << X(t) << "," << Y2(prev) << " " << X(t) << "," << Y2(v) << " ";
      prev = v;
    }
    os << X(tmax) << "," << Y2(prev) << "'/>\n";
    os << "<text x='" << L + 10 << "' y='" << T + 14 * (si + 1) << "' fill='" << colors[si % 4] << "'>" << s.name
       << " (right axis)</text>\n";
  }
  os << "</svg>\n";
  return write_file(path, os.str(), "SVG");
}

prom_histogram::prom_histogram(std::vector<double> upper_bounds)
    : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

void prom_histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

std::string prom_histogram::render(const std::string& name, const std::string& labels) const {
  std::string out;
  char buf[64];
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cum += counts[i];
    std::string le = "+Inf";
    if (i < bounds.size()) {
      std::snprintf(buf, sizeof buf, "%g", bounds[i]);
      le = buf;
    }
    out += name + "_bucket{" + labels + (labels.empty() ? "" : ",") + "le=\"" + le + "\"} " + std::to_string(cum) + "\n";
  }
  std::snprintf(buf, sizeof buf, "%.9g", sum);
  out += name + "_sum{" + labels + "} " + buf + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(count) + "\n";
  return out;
}

nlohmann::json json_of(const percentiles& p) {
  return {{"n", p.n}, {"mean", p.mean}, {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}};
}

nlohmann::json json_of(const replay_summary& s) {
  return {{"requests", s.requests}, {"ok", s.ok},
          {"failed", s.failed},     {"ttft_s", json_of(s.ttft)},
          {"tbt_s", json_of(s.tbt)}, {"e2e_s", json_of(s.e2e)},
          {"slo_attainment", s.slo_attainment}, {"goodput_per_s", s.goodput},
          {"tokens_per_s", s.tokens_per_s},     {"duration_s", s.duration}};
}

nlohmann::json json_of(const std::vector<request_record>& records) {
  auto out = nlohmann::json::array();
  for (auto& r : records) {
    nlohmann::json j = {{"arrival_s", r.arrival},          {"prompt_tokens", r.prompt_tokens},
                        {"output_tokens", r.output_tokens}, {"generated", r.generated},
                        {"ok", r.ok}};
    // A time that never came is null, not a negative number that reads as a measurement.
    j["ttft_s"] = r.first_token >= 0 ? nlohmann::json(r.ttft()) : nlohmann::json(nullptr);
    j["e2e_s"] = r.done >= 0 ? nlohmann::json(r.e2e()) : nlohmann::json(nullptr);
    if (!r.model.empty()) j["model"] = r.model;
    if (!r.subnet.empty()) j["subnet"] = r.subnet;
    if (!r.served.empty()) {
      j["served"] = nlohmann::json::object();
      for (auto& [spec, n] : r.served) j["served"][spec] = n;
    }
    if (!r.ok) j["error"] = r.error;
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace strata
