// Trace parsing on the real traces, malformed lines, synthetic gamma arrivals, shaping, metrics.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "../test_util.hpp"
#include "dataflow/experiment/metrics.hpp"
#include "dataflow/experiment/trace.hpp"

using namespace strata;

namespace {
std::string traces() { return test::data_dir() + "/traces/"; }
}  // namespace

TEST_CASE("the real traces parse completely") {
  struct expect {
    const char* file;
    trace_format f;
    size_t rows;
    double span_min;
  };
  for (auto e : {expect{"AzureLLMInferenceTrace_code.csv", trace_format::azure, 8819, 3000},
                 expect{"AzureLLMInferenceTrace_conv.csv", trace_format::azure, 19366, 3000},
                 expect{"mooncake_conversation_trace.jsonl", trace_format::mooncake, 12031, 3000},
                 expect{"mooncake_synthetic_trace.jsonl", trace_format::mooncake, 3993, 1}}) {
    CAPTURE(e.file);
    auto g = guess_trace_format(traces() + e.file);
    REQUIRE(g);
    CHECK(*g == e.f);
    auto t = load_trace(traces() + e.file, e.f);
    REQUIRE_MESSAGE(t, t.message());
    CHECK(t->requests.size() == e.rows);
    CHECK(t->skipped.empty());
    CHECK(t->requests.front().t == 0);
    CHECK(t->requests.back().t > e.span_min);
    for (size_t i = 1; i < t->requests.size(); ++i) REQUIRE(t->requests[i].t >= t->requests[i - 1].t);
  }
  // Azure: the first row is 2023-11-16 18:17:03.9799600 with 4808 context and 10 generated tokens.
  auto az = load_trace(traces() + "AzureLLMInferenceTrace_code.csv", trace_format::azure);
  CHECK(az->requests[0].prompt_tokens == 4808);
  CHECK(az->requests[0].output_tokens == 10);
  // BurstGPT: columns by name; failed requests (0 tokens) are skipped with their line numbers.
  auto b = load_trace(traces() + "burstgpt1_first400.csv", trace_format::burstgpt);
  REQUIRE(b);
  CHECK(b->lines == 400);
  CHECK(b->requests.size() + b->skipped.size() == 400);
  CHECK(b->skipped.size() > 0);
  CHECK(b->skipped[0].find("failed request (0 tokens)") != std::string::npos);
}

TEST_CASE("malformed and truncated trace lines are reported with their line numbers") {
  std::string csv = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.5,100,10\r\n"
                    "2023-11-16 18:17:04.0,abc,10\r\n2023-11-16 18:17:05.0,200\r\n2023-11-16 18:17:06.25,300,30";
  auto t = parse_trace(csv, trace_format::azure, "t.csv");
  REQUIRE(t);
  CHECK(t->requests.size() == 2);
  REQUIRE(t->skipped.size() == 2);
  CHECK(t->skipped[0].rfind("line 3: cannot parse", 0) == 0);
  CHECK(t->skipped[1] == "line 4: has 2 columns (truncated?)");
  CHECK(t->requests[1].t == doctest::Approx(2.75));
  trace_options strict;
  strict.strict = true;
  auto s = parse_trace(csv, trace_format::azure, "t.csv", strict);
  REQUIRE_FALSE(s);
  CHECK(s.message().rfind("t.csv: line 3: cannot parse", 0) == 0);
  std::string jsonl = "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 6}\n{\"timestamp\": 10, \"inp";
  auto j = parse_trace(jsonl, trace_format::mooncake, "m.jsonl");
  REQUIRE(j);
  CHECK(j->requests.size() == 1);
  CHECK(j->skipped.at(0) == "line 2: not a JSON object (truncated?)");
  CHECK(parse_trace("Foo,Bar\n1,2\n", trace_format::burstgpt, "x.csv").message().find("lacks the timestamp") !=
        std::string::npos);
  CHECK_FALSE(parse_trace("", trace_format::mooncake, "e.jsonl"));
  // The header is the first line that is not blank (a blank first line once made line 2 a data
  // row read through column -1; found by fuzzing).
  auto blank_first = parse_trace("\nTimestamp,Request tokens,Response tokens\n5,10,20\n", trace_format::burstgpt, "b.csv");
  REQUIRE(blank_first);
  CHECK(blank_first->requests.size() == 1);
  // A timestamp no clock reaches (corrupt, or in the wrong unit) is a bad line, not a time.
  auto far = parse_trace("Timestamp,Request tokens,Response tokens\n5,10,20\n1e300,10,20\n-1e14,10,20\n",
                         trace_format::burstgpt, "f.csv");
  REQUIRE(far);
  CHECK(far->requests.size() == 1);
  CHECK(far->skipped.size() == 2);
  CHECK(parse_trace("\n\nFoo\n1\n", trace_format::burstgpt, "x.csv").message() ==
        "x.csv: line 3: header 'Foo' lacks the timestamp/input/output columns");
  // A file of the wrong format is rejected, not replayed as nonsense.
  std::string garbage;
  for (int i = 0; i < 200; ++i) garbage += "not json\n";
  CHECK(parse_trace(garbage, trace_format::mooncake, "g").message().find("is this really a mooncake trace") !=
        std::string::npos);
  CHECK_FALSE(load_trace("/nonexistent.csv", trace_format::azure));
}

TEST_CASE("gamma arrivals: deterministic, the asked rate, burstier with lower shape") {
  gamma_options g;
  g.n = 4000;
  g.rate = 10;
  g.burstiness = 1;
  auto a = gamma_trace(g), b = gamma_trace(g);
  REQUIRE(a);
  CHECK(a->requests.back().t == b->requests.back().t);
  CHECK(mean_rate(*a) == doctest::Approx(10).epsilon(0.08));
  auto cv = [](const trace& t) {  // coefficient of variation of the gaps
    std::vector<double> gaps;
    for (size_t i = 1; i < t.requests.size(); ++i) gaps.push_back(t.requests[i].t - t.requests[i - 1].t);
    double m = 0, v = 0;
    for (double x : gaps) m += x;
    m /= double(gaps.size());
    for (double x : gaps) v += (x - m) * (x - m);
    return std::sqrt(v / double(gaps.size())) / m;
  };
  g.burstiness = 0.25;
  auto bursty = gamma_trace(g);
  CHECK(cv(*a) == doctest::Approx(1.0).epsilon(0.1));  // Poisson
  CHECK(cv(*bursty) > 1.6);                            // 1/sqrt(0.25) = 2
  g.rate = 0;
  CHECK_FALSE(gamma_trace(g));
}

TEST_CASE("gamma ramps: the rate moves linearly at the asked acceleration then holds") {
  gamma_options g;
  g.n = 4000;
  g.rate = 2;
  g.ramp_to = 20;
  g.ramp_accel = 1;  // 18 s of ramp: 2*18 + 18^2/2 = 198 arrivals expected in it
  auto count = [](const trace& t, double from, double to) {
    return double(std::count_if(t.requests.begin(), t.requests.end(),
                                [&](const trace_request& r) { return r.t >= from && r.t < to; }));
  };
  auto up = gamma_trace(g);
  REQUIRE(up);
  CHECK(count(*up, 0, 18) == doctest::Approx(198).epsilon(0.2));
  CHECK(count(*up, 0, 6) == doctest::Approx(2 * 6 + 18).epsilon(0.35));  // slow start: 30, not 6/18 of 198
  CHECK(count(*up, 18, 68) / 50 == doctest::Approx(20).epsilon(0.1));    // then the end rate holds
  g.rate = 20;
  g.ramp_to = 2;  // down: the same shape mirrored
  auto down = gamma_trace(g);
  REQUIRE(down);
  CHECK(count(*down, 0, 18) == doctest::Approx(198).epsilon(0.2));
  CHECK(count(*down, 0, 6) == doctest::Approx(20 * 6 - 18).epsilon(0.2));
  CHECK(count(*down, 18, 118) / 100 == doctest::Approx(2).epsilon(0.2));
  for (size_t i = 1; i < down->requests.size(); ++i) REQUIRE(down->requests[i].t >= down->requests[i - 1].t);
  g.ramp_to = g.rate;  // no ramp: the constant-rate process itself
  gamma_options flat = g;
  flat.ramp_to = 0;
  CHECK(gamma_trace(g)->requests.back().t == gamma_trace(flat)->requests.back().t);
  g.ramp_accel = 0;
  CHECK(gamma_trace(g).message().find("ramp_accel") != std::string::npos);
  g.ramp_accel = 1;
  g.ramp_to = -1;
  CHECK_FALSE(gamma_trace(g));
}

TEST_CASE("shaping: window, speedup, target rate and context clipping") {
  trace t;
  for (int i = 0; i < 10; ++i) t.requests.push_back({double(i), 100 * (i + 1), 50});
  shape_options o;
  o.start = 2;
  o.duration = 5;
  o.speedup = 2;
  o.context = 512;
  auto s = shape_trace(t, o);
  REQUIRE(s);
  REQUIRE(s->requests.size() == 5);
  CHECK(s->requests[1].t == doctest::Approx(0.5));
  CHECK(s->requests.back().prompt_tokens == 511);  // 700 clipped to the context - 1
  CHECK(s->requests.back().output_tokens == 1);
  CHECK(s->requests[0].prompt_tokens + s->requests[0].output_tokens <= 512);
  o = {};
  o.target_rate = 4;
  auto r = shape_trace(t, o);
  CHECK(mean_rate(*r) == doctest::Approx(4));
  o = {};
  o.start = 100;
  CHECK_FALSE(shape_trace(t, o));
}

TEST_CASE("replay metrics: percentiles, SLO attainment, goodput, SVG") {
  CHECK(summarize({}).n == 0);
  auto p = summarize({5, 1, 4, 2, 3});
  CHECK(p.p50 == 3);
  CHECK(p.max == 5);
  CHECK(p.mean == 3);
  std::vector<request_record> rs(3);
  rs[0] = {0.0, 0.1, 0.5, 10, 3, 3, {0.1, 0.2, 0.3}, true, "", "", "", {}};
  rs[1] = {1.0, 3.0, 3.5, 10, 3, 3, {3.0, 3.1, 3.2}, true, "", "", "", {}};  // TTFT 2 s: misses the SLO
  rs[2] = {2.0, -1, 2.5, 10, 3, 0, {}, false, "error: shard down", "", "", {}};
  auto s = summarize_replay(rs, {1.0, 0.2});
  // Both SLOs count: a fast first token with slow tokens after it misses.
  auto slow = rs;
  slow[0].token_times = {0.1, 0.5, 0.9};  // TTFT 0.1 s, TBT 0.4 s > 0.2 s
  CHECK(summarize_replay(slow, {1.0, 0.2}).slo_attainment == 0);
  CHECK(summarize_replay(slow, {1.0, 0.5}).slo_attainment == doctest::Approx(1.0 / 3));
  CHECK(s.ok == 2);
  CHECK(s.failed == 1);
  CHECK(s.slo_attainment == doctest::Approx(1.0 / 3));
  CHECK(s.ttft.max == doctest::Approx(2.0));
  CHECK(s.tbt.p50 == doctest::Approx(0.1));
  CHECK(s.table("x").find("SLO attainment 33.3%") != std::string::npos);
  test::temp_dir d;
  REQUIRE(write_timeline_svg(d / "t.svg", "t", rs, {{"instances", {{0, 1}, {1, 2}}}}));
  std::ifstream in(d / "t.svg");
  std::string svg((std::istreambuf_iterator<char>(in)), {});
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("instances (right axis)") != std::string::npos);
  CHECK_FALSE(write_timeline_svg("/nonexistent/dir/t.svg", "t", rs, {}));
}
