#include "actors/bench_serve.hpp"

#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "dataflow/text/openai.hpp"

namespace strata {

using json = nlohmann::json;

namespace {
// The message of an OpenAI error body ({"error": {"message": ...}}), else the body's start.
std::string error_message(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].contains("message") &&
      j["error"]["message"].is_string())
    return j["error"]["message"].get<std::string>();
  return body.substr(0, 200);
}
}  // namespace

expected<std::vector<endpoint_model>> endpoint_models(const http_url& url, const http_load_options& o) {
  auto o2 = o;
  o2.timeout = std::min(o.timeout, std::chrono::milliseconds(30000));
  auto r = http_fetch(url, "GET", "/v1/models", "", o2);
  if (!r) return r.err();
  if (r->status != 200)
    return make_error("GET " + url.str() + "/v1/models: HTTP " + std::to_string(r->status) + ": " +
                      error_message(r->body));
  auto j = json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array())
    return make_error("GET " + url.str() + "/v1/models: not a model list (no 'data' array)");
  std::vector<endpoint_model> out;
  for (auto& m : j["data"]) {
    if (!m.is_object() || !m.contains("id") || !m["id"].is_string()) continue;
    endpoint_model e;
    e.id = m["id"].get<std::string>();
    if (m.contains("max_model_len") && m["max_model_len"].is_number_integer())
      e.context = int(std::min<int64_t>(m["max_model_len"].get<int64_t>(), 1 << 30));
    if (m.contains("parent") && m["parent"].is_string()) e.parent = m["parent"].get<std::string>();
    if (m.contains("strata") && m["strata"].is_object() && m["strata"].contains("quality") &&
        m["strata"]["quality"].is_number())
      e.quality = m["strata"]["quality"].get<double>();
    out.push_back(std::move(e));
  }
  if (out.empty()) return make_error("GET " + url.str() + "/v1/models lists no model");
  return out;
}

namespace {

// One request's progress while its response streams.
struct in_flight {
  int status = 0;
  std::string error_body;  // a non-200 response's body (first 4 KiB)
  openai::sse_reader sse;
  std::string finish_reason, event_error;
  int completion_tokens = -1;
  int chunks = 0;
};

std::string error_of(const in_flight& f) {
  if (f.status != 200) {
    std::string msg = error_message(f.error_body);
    return "HTTP " + std::to_string(f.status) + (msg.empty() ? "" : ": " + msg);
  }
  if (!f.event_error.empty()) return "in the stream: " + f.event_error;
  if (f.finish_reason.empty()) return "the stream ended without a finish reason";
  return {};
}

}  // namespace

expected<bench_serve_result> run_bench_serve(const bench_serve_spec& spec) {
  if (spec.requests.requests.empty()) return make_error("empty trace");
  if (spec.models.empty()) return make_error("no model to ask for");
  if (spec.vocab < 4) return make_error("--vocab must be at least 4 (ids are drawn from [3, vocab))");
  size_t n = spec.requests.requests.size();
  std::vector<http_call> calls(n);
  bench_serve_result res;
  res.records.resize(n);
  std::mt19937_64 rng(spec.seed);
  std::uniform_int_distribution<int32_t> tok(3, spec.vocab - 1);
  for (size_t i = 0; i < n; ++i) {
    auto& tr = spec.requests.requests[i];
    auto& r = res.records[i];
    r.arrival = tr.t;
    r.prompt_tokens = tr.prompt_tokens;
    r.output_tokens = tr.output_tokens;
    r.model = spec.models[i % spec.models.size()];
    std::vector<int32_t> prompt{1};
    for (int k = 1; k < tr.prompt_tokens; ++k) prompt.push_back(tok(rng));
    json body = {{"model", r.model},       {"prompt", prompt},
                 {"max_tokens", tr.output_tokens}, {"temperature", 0},
                 {"stream", true},         {"stream_options", {{"include_usage", true}}},
                 {"ignore_eos", true}};
    if (spec.slo_ms > 0) body["slo_ms"] = spec.slo_ms;
    calls[i] = http_call{tr.t, "POST", "/v1/completions", body.dump()};
  }
  std::vector<in_flight> fl(n);
  std::map<int, size_t> statuses;
  size_t done = 0;
  double last = 0;
  http_call_events ev;
  ev.sent = [&](size_t i, double t) { res.records[i].arrival = t; };
  ev.head = [&](size_t i, int status, double) { fl[i].status = status; };
  ev.data = [&](size_t i, std::string_view bytes, double t) {
    auto& f = fl[i];
    if (f.status != 200) {
      if (f.error_body.size() < 4096) f.error_body.append(bytes.substr(0, 4096 - f.error_body.size()));
      return;
    }
    auto& r = res.records[i];
    for (auto& data : f.sse.feed(bytes)) {
      auto e = openai::parse_stream_event(data);
      if (!e.error.empty() && f.event_error.empty()) f.event_error = e.error;
      if (!e.text.empty()) {
        if (r.first_token < 0) r.first_token = t;
        r.token_times.push_back(t);
        ++f.chunks;
      }
      if (!e.finish_reason.empty()) f.finish_reason = e.finish_reason;
      if (e.completion_tokens >= 0) f.completion_tokens = e.completion_tokens;
      if (!e.subnet.empty()) r.subnet = e.subnet;
      if (!e.served.empty()) r.served = e.served;
    }
  };
  ev.end = [&](size_t i, const std::string& error, double t) {
    auto& f = fl[i];
    auto& r = res.records[i];
    r.done = t;
    r.error = error.empty() ? error_of(f) : error;
    r.ok = r.error.empty();
    r.generated = f.completion_tokens >= 0 ? f.completion_tokens : f.chunks;
    ++statuses[f.status];
    ++done;
    last = t;
    f = in_flight{};  // its buffers are not needed any more
    if (spec.finished) spec.finished(i, r);
    if (spec.progress && (done % std::max<size_t>(1, spec.progress_every) == 0 || done == n))
      spec.progress(done, n, t);
  };
  if (auto st = run_http_load(spec.url, calls, ev, spec.http); !st) return st.err();
  res.summary = summarize_replay(res.records, spec.slo);
  for (auto& m : spec.models) {
    if (std::any_of(res.per_model.begin(), res.per_model.end(), [&](auto& p) { return p.first == m; })) continue;
    std::vector<request_record> mine;
    for (auto& r : res.records)
      if (r.model == m) mine.push_back(r);
    res.per_model.emplace_back(m, summarize_replay(mine, spec.slo));
  }
  res.statuses.assign(statuses.begin(), statuses.end());
  std::map<std::string, size_t> subnets;
  for (auto& r : res.records)
    if (!r.subnet.empty()) ++subnets[r.subnet];
  res.subnets.assign(subnets.begin(), subnets.end());
  return res;
}

std::string results_json(const bench_serve_spec& spec, const bench_serve_result& r) {
  json models = json::object();
  for (auto& [m, s] : r.per_model) models[m] = json_of(s);
  json statuses = json::object();
  for (auto& [code, count] : r.statuses) statuses[code ? std::to_string(code) : "none"] = count;
  json j = {{"url", spec.url.str()},
            {"slo", {{"ttft_s", spec.slo.ttft_s}, {"tbt_s", spec.slo.tbt_s}}},
            {"summary", json_of(r.summary)},
            {"models", models},
            {"statuses", statuses},
            {"subnets", json(std::map<std::string, size_t>(r.subnets.begin(), r.subnets.end()))},
            {"requests", json_of(r.records)}};
  return j.dump(1) + "\n";
}

}  // namespace strata
