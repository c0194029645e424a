// The actor pipeline, for real: CAF actors, router, continuous batching, cancellation, failures.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <random>
#include <thread>

#include "../test_util.hpp"
#include "actors/engine.hpp"
#include "actors/experiments.hpp"
#include "actors/replay.hpp"
#include "actors/scaler.hpp"
#include "dataflow/text/tokenizer.hpp"

using namespace strata;
using namespace std::chrono_literals;

namespace {

using test::stories;

std::vector<int32_t> encode(const std::string& text) {
  static tokenizer t = *tokenizer::load(find_tokenizer(test::stories_dir()), 512);
  auto ids = t.encode(text, true);
  return {ids.begin(), ids.end()};
}

std::vector<int32_t> reference(const std::vector<int32_t>& prompt, int n, const sampling_params& p = {}) {
  auto out = generate_reference(*stories(), std::vector<int>(prompt.begin(), prompt.end()), n, p);
  return {out.begin(), out.end()};
}

// An actor system plus one served pipeline; everything is stopped on destruction so the
// system can shut down.
// An actor's stats (router_stats, stage_stats), asked the way operators ask: (stats_atom).
template <class Stats>
Stats stats_of(caf::actor_system& sys, const caf::actor& a) {
  Stats out;
  caf::scoped_actor self{sys};
  self->request(a, 5s, stats_atom::value).receive([&](const Stats& s) { out = s; }, [](caf::error&) { FAIL("no stats"); });
  return out;
}

// Waits (bounded) until the router's stats satisfy `pred`: how a test sequences its stimuli.
template <class Pred>
bool router_until(caf::actor_system& sys, const caf::actor& router, Pred pred) {
  return test::wait_until([&] { return pred(stats_of<router_stats>(sys, router)); }, 10s, 2ms);
}

struct served {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  pipeline p;
  caf::actor router;

  explicit served(const std::string& shards, router_options opt = {}, const std::string& devices = "cpu") {
    register_strata_types(cfg);
    cfg.set("scheduler.max-threads", 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    auto ranges = parse_shards(shards, stories()->config.n_layers);
    REQUIRE(ranges);
    auto devs = parse_devices(devices, ranges->size());
    REQUIRE(devs);
    auto pl = spawn_pipeline(*sys, stories(), *ranges, *devs);
    REQUIRE(pl);
    p = *pl;
    router = spawn_router(*sys, stories(), p.path, opt);
  }
  ~served() {
    stop_pipeline(p);
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  }
  expected<completion> run(const generate_request& r, const std::function<bool(int32_t)>& f = {}) {
    return generate(*sys, router, r, f, 20s);
  }
  // Sum of KV sequences held by all shards (asks each shard, with a timeout).
  uint64_t kv_sequences() {
    caf::scoped_actor self{*sys};
    uint64_t n = 0;
    for (auto& h : p.shards)
      self->request(h.actor, 5s, stats_atom::value)
          .receive([&](const stage_stats& s) { n += s.kv_sequences; },
                   [&](caf::error& e) { FAIL("stats request failed: " << describe(e)); });
    return n;
  }
  stage_stats shard_stats(size_t i) {
    caf::scoped_actor self{*sys};
    stage_stats out;
    self->request(p.shards.at(i).actor, 5s, stats_atom::value)
        .receive([&](const stage_stats& s) { out = s; },
                 [&](caf::error& e) { FAIL("stats request failed: " << describe(e)); });
    return out;
  }
  bool kv_drains() {
    return test::wait_until([&] { return kv_sequences() == 0; }, 2s, 10ms);
  }
};

generate_request greedy(std::vector<int32_t> prompt, int n) {
  generate_request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = n;
  return r;
}

}  // namespace

TEST_CASE("a route through a CUDA shard generates where a GPU exists, and fails with the reason where none does") {
  served s("3,2", {}, "cpu,cuda:0");
  auto r = s.run(greedy(encode("Once upon a time"), 12));
  REQUIRE(r);
  if (r->result.finish_reason == "error") {  // no usable device or no CUDA in this build
    CHECK(r->result.error.find("cuda:0") != std::string::npos);
    MESSAGE("no GPU here: " << r->result.error);
  } else {
    CHECK(r->result.generated_tokens == 12);
    CHECK(r->tokens.size() == 12);
  }
  CHECK(s.kv_drains());
}

TEST_CASE("greedy text through the actors is identical for every sharding") {
  auto want = reference({1}, 150);
  REQUIRE(want.size() == 150);
  for (std::string spec : {"1", "2", "5", "2,3", "1,4"}) {
    CAPTURE(spec);
    served s(spec);
    auto r = s.run(greedy({1}, 150));
    REQUIRE_MESSAGE(r, r.message());
    CHECK(r->tokens == want);
    CHECK(r->result.finish_reason == "length");
    CHECK(r->result.generated_tokens == 150);
    CHECK(s.kv_drains());
  }
}

TEST_CASE("logits are bitwise identical for any sharding") {
  auto prompt = encode("The little cat saw a big dog");
  std::vector<std::vector<float>> seen;
  for (std::string spec : {"1", "5", "3,2"}) {
    served s(spec);
    caf::scoped_actor self{*s.sys};
    auto b = std::make_shared<step_batch>();
    b->path = s.p.path;
    b->reply_to = caf::actor_cast<caf::actor>(self);
    for (size_t i = 0; i < prompt.size(); ++i) {
      b->seqs.push_back(42);
      b->pos.push_back(int32_t(i));
      b->tokens.push_back(prompt[i]);
      b->want.push_back(1);
      b->sampling.push_back({});
      b->rng.push_back(1);
    }
    b->return_logits = true;
    self->send(s.p.head, step_atom::value, b);
    step_ptr back;
    self->receive([&](step_atom, step_ptr& r) { back = r; }, caf::after(10s) >> [] {});
    REQUIRE(back);
    CHECK(back->error.empty());
    REQUIRE(back->logits.size() == prompt.size() * 512);
    seen.push_back(back->logits);
  }
  CHECK(std::memcmp(seen[0].data(), seen[1].data(), seen[0].size() * 4) == 0);
  CHECK(std::memcmp(seen[0].data(), seen[2].data(), seen[0].size() * 4) == 0);
}

// Runs the requests on `s` concurrently, request i arriving 3i ms after the first (while the
// others run): each one's tokens, or its error.
struct outcomes {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::string> errors;
};
static outcomes run_together(served& s, const std::vector<generate_request>& reqs) {
  outcomes out{std::vector<std::vector<int32_t>>(reqs.size()), std::vector<std::string>(reqs.size())};
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i)
    threads.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * i));
      auto r = s.run(reqs[i]);
      if (!r)
        out.errors[i] = r.message();
      else
        out.tokens[i] = r->tokens;
    });
  for (auto& t : threads) t.join();
  return out;
}

TEST_CASE("concurrent requests join the running batch and each matches its solo run") {
  const char* texts[] = {"", "Once upon a time, Tom", "The little cat", "Lily and Ben went to the park",
                         "One day, a big dog", "Sam had a red ball", "The sun", "A bird sang"};
  for (int inflight : {1, 2}) {
    router_options opt;
    opt.max_batch_tokens = 6;  // long prompts are prefilled in chunks alongside decodes
    opt.max_inflight = inflight;
    served s("2,3", opt);
    std::vector<generate_request> reqs;
    std::vector<std::vector<int32_t>> want;
    for (int i = 0; i < 8; ++i) {
      auto prompt = encode(texts[i]);
      int n = 20 + 10 * i;
      want.push_back(reference(prompt, n));
      reqs.push_back(greedy(prompt, n));
    }
    auto got = run_together(s, reqs);
    for (size_t i = 0; i < 8; ++i) {
      CAPTURE(i);
      CHECK(got.errors[i] == "");
      CHECK(got.tokens[i] == want[i]);
    }
    CHECK(s.kv_drains());
  }
}

TEST_CASE("requests of different subnets share batches and each matches its subnet's reference") {
  // Depths that skip a whole shard (d1 runs only layer 0), widths that split a GEMM, and the
  // whole model, concurrently through three shards: mixed batches, skipped hops.
  const char* specs[] = {"full", "d3w50", "d1", "w75", "h50", "d4w50h50", "d2", "full"};
  const char* texts[] = {"", "Once upon a time, Tom", "The little cat", "Lily and Ben went to the park",
                         "One day, a big dog", "Sam had a red ball", "The sun", "A bird sang"};
  router_options opt;
  opt.max_batch_tokens = 6;
  served s("1,2,2", opt);
  const auto& c = stories()->config;
  std::vector<generate_request> reqs;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 8; ++i) {
    auto prompt = encode(texts[i]);
    auto sub = subnet_named(specs[i], c);
    REQUIRE(sub);
    auto ref = generate_reference(*stories(), std::vector<int>(prompt.begin(), prompt.end()), 24, {}, {}, *sub);
    want.emplace_back(ref.begin(), ref.end());
    reqs.push_back(greedy(prompt, 24));
    reqs.back().sub = *sub;
  }
  auto got = run_together(s, reqs);
  for (size_t i = 0; i < 8; ++i) {
    CAPTURE(specs[i]);
    CHECK(got.errors[i] == "");
    CHECK(got.tokens[i] == want[i]);
  }
  CHECK(want[1] != want[0]);  // the subnets compute other functions
  CHECK(s.kv_drains());
  // A subnet that does not fit the model is refused at admission with the reason.
  auto bad = greedy(encode("x"), 4);
  bad.sub.layers = {0, 7};
  auto r = s.run(bad);
  REQUIRE_FALSE(r);
  CHECK(r.message().find("subnet: layer 7 outside [0, 5)") != std::string::npos);
}

TEST_CASE("a long prompt is prefilled in steps of at most max_batch_tokens rows") {
  router_options opt;
  opt.max_batch_tokens = 8;
  served s("5", opt);
  auto prompt = encode("Lily and Ben went to the park to play with a ball. They ran and jumped and laughed all day long");
  REQUIRE(prompt.size() >= 20);
  prompt.resize(20);
  auto r = s.run(greedy(prompt, 3));
  REQUIRE_MESSAGE(r, r.message());
  CHECK(r->tokens == reference(prompt, 3));
  // 20 prompt rows in steps of 8, 8 and 4 (the last samples the first token), then 2 decode steps.
  auto st = s.shard_stats(0);
  CHECK(st.rows == 22);
  CHECK(st.steps == 5);
}

TEST_CASE("prompt logprobs through chunked prefill beside other requests: the reference's bits") {
  router_options opt;
  opt.max_batch_tokens = 3;  // the prompt is scored over several steps, with other rows in them
  served s("2,3", opt);
  auto prompt = encode("Lily and Ben went to the park to play with a ball");
  const int V = stories()->config.vocab_size;
  // Prompt token p+1's logprobs from the logits after [0, p], each prefix run on its own.
  std::vector<token_logprobs> want;
  for (size_t p = 0; p + 1 < prompt.size(); ++p) {
    std::vector<int> prefix(prompt.begin(), prompt.begin() + long(p + 1));
    generate_reference(*stories(), prefix, 1, {}, [&](int pos, const float* l, int) {
      if (pos == int(p)) want.push_back(logprobs_of(l, V, prompt[p + 1], 3));
    });
  }
  REQUIRE(want.size() + 1 == prompt.size());
  std::vector<std::thread> others;
  for (int i = 0; i < 3; ++i) others.emplace_back([&, i] { CHECK(s.run(greedy(encode("The sun"), 10 + 5 * i))); });
  for (int max_new : {6, 0}) {  // 0: the prompt only, as lm-eval's loglikelihood asks
    CAPTURE(max_new);
    auto r = greedy(prompt, max_new);
    r.prompt_logprobs = 3;
    r.logprobs = 1;
    auto got = s.run(r);
    REQUIRE_MESSAGE(got, got.message());
    CHECK(got->tokens == reference(prompt, max_new));
    CHECK(got->logprobs.size() == size_t(max_new));
    REQUIRE(got->prompt_logprobs.size() == want.size());
    for (size_t p = 0; p < want.size(); ++p) {
      CAPTURE(p);
      CHECK(got->prompt_logprobs[p].logprob == want[p].logprob);
      CHECK(got->prompt_logprobs[p].top_ids == want[p].top_ids);
      CHECK(got->prompt_logprobs[p].top_logprobs == want[p].top_logprobs);
    }
    CHECK(got->result.finish_reason == "length");
  }
  for (auto& t : others) t.join();
  CHECK(s.kv_drains());
}

TEST_CASE("seeded sampling gives the same tokens for any sharding") {
  generate_request r = greedy(encode("Once upon a time"), 80);
  r.temperature = 0.9f;
  r.top_p = 0.9f;
  r.seed = 1234;
  auto want = reference(r.prompt, 80, {0.9f, 0.9f, 1234});
  for (std::string spec : {"1", "5"}) {
    served s(spec);
    auto got = s.run(r);
    REQUIRE(got);
    CHECK(got->tokens == want);
  }
  auto greedy_tokens = reference(r.prompt, 80);
  CHECK(want != greedy_tokens);
}

TEST_CASE("a request can be cancelled and its cache is freed") {
  served s("3");
  auto req = greedy({1}, 300);
  req.ignore_eos = true;
  int seen = 0;
  auto r = s.run(req, [&](int32_t) { return ++seen < 5; });
  REQUIRE(r);
  CHECK(r->result.finish_reason == "cancelled");
  CHECK(r->tokens.size() >= 5);
  CHECK(r->tokens.size() < 300);
  CHECK(s.kv_drains());
  // The router keeps serving.
  auto again = s.run(greedy({1}, 10));
  REQUIRE(again);
  CHECK(again->tokens == reference({1}, 10));
}

TEST_CASE("a shard that dies fails its requests with a clear error instead of hanging") {
  served s("2,3");
  std::atomic<int> tokens{0};
  expected<completion> result = make_error("not run");
  std::thread client([&] {
    auto req = greedy({1}, 400);
    req.ignore_eos = true;
    result = s.run(req, [&](int32_t) {
      ++tokens;
      return true;
    });
  });
  CHECK(test::wait_until([&] { return tokens >= 3; }, 20s, 1ms));
  caf::anon_send_exit(s.p.shards[1].actor, caf::exit_reason::kill);
  client.join();
  REQUIRE_MESSAGE(result, result.message());
  CHECK(result->result.finish_reason == "error");
  CHECK(result->result.error.find("layer shard [2,5) of instance 0 is down") != std::string::npos);
  // New requests are refused with the reason, not queued forever.
  auto r = s.run(greedy({1}, 5));
  REQUIRE_FALSE(r);
  CHECK(r.message().find("unavailable: layer shard [2,5) of instance 0 is down") != std::string::npos);
}

TEST_CASE("requests on an instance that dies are re-admitted on another: no error, no gap, the same tokens") {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  cfg.set("scheduler.max-threads", 2);
  caf::actor_system sys{cfg};
  auto m = stories();
  shard_options slow;
  slow.device.layer_s = 0.0005;  // steps take a few ms: the requests are mid-stream at the kill
  auto instance = [&](uint32_t id, std::vector<caf::actor>& parts) {
    auto h = sys.spawn(head_actor, m), sh = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, slow),
         t = sys.spawn(tail_actor, m);
    parts = {h, sh, t};
    auto r = std::make_shared<route>();
    r->instance = id;
    r->hops = {{h, {0, 0}, id}, {sh, {0, 5}, id}, {t, {5, 5}, id}};
    return r;
  };
  std::vector<caf::actor> a, b;
  auto ra = instance(1, a), rb = instance(2, b);
  router_options ro;
  ro.scheduler = "least-loaded";  // spreads the requests over both instances
  auto router = spawn_router(sys, m, std::vector<route_ptr>{ra, rb}, ro);
  // Greedy and seeded-sampling requests: both must continue exactly where they were.
  const int n = 8, len = 150;
  std::vector<generate_request> reqs;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < n; ++i) {
    auto r = greedy({1, int32_t(100 + i)}, len);
    r.ignore_eos = true;
    if (i % 2) {
      r.temperature = 0.8f;
      r.top_p = 0.9f;
      r.seed = uint64_t(77 + i);
    }
    want.push_back(reference(r.prompt, len, {r.temperature, r.top_p, r.seed}));
    reqs.push_back(r);
  }
  std::vector<expected<completion>> got(n, make_error("not run"));
  std::vector<std::vector<int32_t>> streamed(n);
  std::atomic<int> tokens{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i)
    clients.emplace_back([&, i] {
      got[size_t(i)] = generate(sys, router, reqs[size_t(i)], [&, i](int32_t t) {
        streamed[size_t(i)].push_back(t);
        ++tokens;
        return true;
      });
    });
  CHECK(test::wait_until([&] { return tokens >= n * 10; }, 20s, 1ms));
  caf::anon_send_exit(b[1], caf::exit_reason::kill);  // instance 2's shard: its requests lose their KV cache
  for (auto& c : clients) c.join();
  for (int i = 0; i < n; ++i) {
    CAPTURE(i);
    REQUIRE_MESSAGE(got[size_t(i)], got[size_t(i)].message());
    CHECK(got[size_t(i)]->result.error == "");
    CHECK(got[size_t(i)]->result.finish_reason == "length");
    CHECK(streamed[size_t(i)] == want[size_t(i)]);  // each token streamed once, none missing
  }
  caf::scoped_actor self{sys};
  self->request(router, 5s, stats_atom::value)
      .receive(
          [&](const router_stats& s) {
            CHECK(s.routes == 1);
            CHECK(s.readmissions >= 2);  // least-loaded put about half of them on instance 2
          },
          [](caf::error&) { FAIL("no stats"); });
  // Losing the last instance fails what runs there with the reason, and refuses new work.
  caf::anon_send_exit(a[1], caf::exit_reason::kill);
  CHECK(router_until(sys, router, [](const router_stats& s) { return s.routes == 0; }));
  auto r = generate(sys, router, greedy({1}, 5));
  REQUIRE_FALSE(r);
  CHECK(r.message().find("layer shard [0,5) of instance 1 is down") != std::string::npos);
  for (auto& x : a) caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
  for (auto& x : b) caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
}

TEST_CASE("bad requests are rejected with precise reasons") {
  served s("1");
  auto reason = [&](generate_request r) {
    auto x = s.run(r);
    REQUIRE_FALSE(x);
    return x.message();
  };
  CHECK(reason(greedy({}, 5)).find("bad_request: empty prompt") == 0);
  CHECK(reason(greedy({1, 999}, 5)).find("token id 999 outside the vocabulary of 512") != std::string::npos);
  CHECK(reason(greedy(std::vector<int32_t>(600, 5), 5)).find("leaves no room in the context of 512") !=
        std::string::npos);
  CHECK(reason(greedy({1}, -1)).find("max_new_tokens must not be negative") != std::string::npos);
  auto bad_lp = greedy({1, 5}, 5);
  bad_lp.prompt_logprobs = 21;
  auto bad_top = greedy({1, 5}, 2);
  bad_top.logprobs = 21;
  CHECK(reason(bad_top).find("at most 20 top logprobs per token") != std::string::npos);
  CHECK(reason(bad_lp).find("at most 20 top logprobs per prompt token") != std::string::npos);
  auto bad_p = greedy({1}, 5);
  bad_p.top_p = 0.0f;
  CHECK(reason(bad_p).find("top_p") != std::string::npos);
  auto bad_t = greedy({1}, 5);
  bad_t.temperature = -1.0f;
  CHECK(reason(bad_t).find("temperature") != std::string::npos);
  // Generation stops at the context limit.
  auto r = s.run(greedy(std::vector<int32_t>(510, 5), 50));
  REQUIRE(r);
  CHECK(r->result.finish_reason == "length");
  CHECK(r->tokens.size() == 2);
}

TEST_CASE("a router with an unknown route scheduler refuses every request with the reason, whatever routes arrive") {
  router_options opt;
  opt.scheduler = "nope";
  served s("5", opt);
  auto refused = [&] {
    auto x = s.run(greedy({1, 5}, 2));
    REQUIRE_FALSE(x);
    CHECK(x.message() == "bad_request: route scheduler: unknown route scheduler 'nope' (expected one of zigzag, least-loaded)");
  };
  refused();
  caf::anon_send(s.router, routes_atom::value, std::vector<route_ptr>{s.p.path});  // routes do not make it schedule
  refused();
}

TEST_CASE("a full queue answers overloaded instead of growing") {
  router_options opt;
  opt.max_running = 1;
  opt.max_waiting = 1;
  served s("1", opt);
  caf::scoped_actor self{*s.sys};
  auto req = greedy({1}, 200);
  req.ignore_eos = true;
  int accepted = 0, overloaded = 0;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i)
    self->request(s.router, 5s, generate_atom::value, req)
        .receive(
            [&](uint64_t id) {
              ++accepted;
              ids.push_back(id);
            },
            [&](caf::error& e) {
              CHECK(describe(e).find("overloaded: queue full") == 0);
              ++overloaded;
            });
  CHECK(accepted >= 1);
  CHECK(accepted <= 2);
  CHECK(overloaded >= 4);
  for (auto id : ids) self->send(s.router, cancel_atom::value, id);
}

TEST_CASE("requests of a client that goes away are cancelled and freed") {
  served s("2");
  {
    caf::scoped_actor gone{*s.sys};
    auto req = greedy({1}, 400);
    req.ignore_eos = true;
    gone->request(s.router, 5s, generate_atom::value, req).receive([](uint64_t) {}, [](caf::error&) {});
    gone->receive([](token_atom, uint64_t, int32_t) {}, caf::after(5s) >> [] {});
  }  // the client dies here with its request running
  CHECK(s.kv_drains());
  auto r = s.run(greedy({1}, 10));
  REQUIRE(r);
  CHECK(r->tokens == reference({1}, 10));
}

TEST_CASE("a stage that stops answering times the step out") {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto m = stories();
  // A stage that swallows batches: stands for a hung peer.
  auto black_hole = sys.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](step_atom, step_ptr&) {}}; });
  auto head = sys.spawn(head_actor, m);
  auto tail = sys.spawn(tail_actor, m);
  auto path = std::make_shared<route>();
  path->hops = {{head, {0, 0}}, {black_hole, {0, 5}}, {tail, {5, 5}}};
  router_options opt;
  opt.step_timeout = 200ms;
  auto router = spawn_router(sys, m, path, opt);
  auto t0 = std::chrono::steady_clock::now();
  auto r = generate(sys, router, greedy({1}, 10), {}, 10s);
  REQUIRE(r);
  CHECK(r->result.finish_reason == "error");
  CHECK(r->result.error.find("timed out after 200 ms") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  for (const caf::actor& a : {black_hole, head, tail, router}) caf::anon_send_exit(a, caf::exit_reason::kill);
}

TEST_CASE("trace replay issues every request at its time and records every token") {
  served s("2,3");
  auto t = gamma_trace({.n = 30, .rate = 40, .burstiness = 0.5, .prompt_max = 40, .output_max = 20});
  REQUIRE(t);
  replay_options o;
  o.vocab_size = 512;
  size_t progress_calls = 0;
  o.progress_every = 10;
  o.progress = [&](size_t, size_t, double) { ++progress_calls; };
  auto records = replay(*s.sys, s.router, *t, o);
  REQUIRE_MESSAGE(records, records.message());
  REQUIRE(records->size() == 30);
  for (size_t i = 0; i < records->size(); ++i) {
    auto& r = (*records)[i];
    CAPTURE(i);
    CHECK(r.ok);
    CHECK(r.generated == t->requests[i].output_tokens);
    CHECK(r.token_times.size() == size_t(r.generated));
    CHECK(r.arrival >= t->requests[i].t - 0.001);  // never early
    CHECK(r.ttft() >= 0);
  }
  CHECK(progress_calls == 3);
  auto sum = summarize_replay(*records, {});
  CHECK(sum.ok == 30);
  CHECK(s.kv_drains());
}

TEST_CASE("a replay whose pipeline loses a shard records the failures and ends") {
  served s("2,3");
  auto t = gamma_trace({.n = 40, .rate = 100, .output_min = 50, .output_max = 60});
  replay_options o;
  o.vocab_size = 512;
  o.request_timeout = 5s;
  std::thread killer([&] {
    // Strikes while requests run: once some tokens came out.
    router_until(*s.sys, s.router, [](const router_stats& st) { return st.tokens >= 20 && st.running > 0; });
    caf::anon_send_exit(s.p.shards[0].actor, caf::exit_reason::kill);
  });
  auto records = replay(*s.sys, s.router, *t, o);
  killer.join();
  REQUIRE(records);
  size_t failed = 0;
  for (auto& r : *records)
    if (!r.ok) {
      ++failed;
      CHECK((r.error.find("layer shard [0,2) of instance 0 is down") != std::string::npos));
    }
  CHECK(failed > 0);
}

TEST_CASE("cooperative routes through a loading instance give the same tokens as a full one") {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto m = stories();
  for (bool kv_move : {true, false}) {
  CAPTURE(kv_move);
  shard_options loading;
  loading.preload = false;
  loading.device.layer_s = 0.002;  // steps take >= 4 ms: the long request is still running when B completes
  auto a_head = sys.spawn(head_actor, m), a_tail = sys.spawn(tail_actor, m);
  auto a_shard = sys.spawn(shard_actor, m, layer_range{0, 5});
  auto b_head = sys.spawn(head_actor, m), b_tail = sys.spawn(tail_actor, m);
  auto b_shard = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, loading);
  for (int l : {0, 1}) caf::anon_send(b_shard, load_atom::value, int32_t(l), layer_ptr(m->layers[size_t(l)]));
  auto coop = std::make_shared<route>();
  coop->instance = 2;
  coop->hops = {{b_head, {0, 0}, 2}, {b_shard, {0, 2}, 2}, {a_shard, {2, 5}, 1}, {a_tail, {5, 5}, 1}};
  router_options ro;
  ro.kv_migration = kv_move;
  auto router = spawn_router(sys, m, std::vector<route_ptr>{coop}, ro);
  auto want = reference({1}, 120);
  // A long request starts on the cooperative route ...
  expected<completion> first = make_error("not run");
  std::thread t([&] { first = generate(sys, router, greedy({1}, 120)); });
  CHECK(router_until(sys, router, [](const router_stats& s) { return s.tokens >= 2; }));
  // ... B finishes loading: new requests go to its local route, and the first moves there too,
  // taking its KV cache for layers [2,5) from A along (or recomputing it on B).
  for (int l : {2, 3, 4}) caf::anon_send(b_shard, load_atom::value, int32_t(l), layer_ptr(m->layers[size_t(l)]));
  auto local = std::make_shared<route>();
  local->instance = 2;
  local->hops = {{b_head, {0, 0}, 2}, {b_shard, {0, 5}, 2}, {b_tail, {5, 5}, 2}};
  CHECK(test::wait_until([&] { return stats_of<stage_stats>(sys, b_shard).layers_loaded == 5; }, 10s, 2ms));
  caf::anon_send(router, routes_atom::value, std::vector<route_ptr>{local});
  auto second = generate(sys, router, greedy({1}, 120));
  t.join();
  REQUIRE_MESSAGE(first, first.message());
  REQUIRE_MESSAGE(second, second.message());
  CHECK(first->tokens == want);
  CHECK(second->tokens == want);
  caf::scoped_actor self{sys};
  self->request(router, 5s, stats_atom::value)
      .receive(
          [&](const router_stats& s) {
            CHECK(s.migrations == 1);
            CHECK(s.kv_migrations == (kv_move ? 1u : 0u));
            // 3 layers x (keys + values) x positions so far x kv_dim floats.
            if (kv_move) CHECK(s.kv_bytes_moved % (3 * 2 * m->config.kv_dim() * sizeof(float)) == 0);
            CHECK((s.kv_bytes_moved > 0) == kv_move);
          },
          [](caf::error&) { FAIL("no stats"); });
  self->request(a_shard, 5s, stats_atom::value)
      .receive([&](const stage_stats& s) { CHECK(s.kv_sequences == 0); }, [](caf::error&) { FAIL("no stats"); });
  // A route through a layer that has not landed fails clearly.
  auto c_shard = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, loading);
  auto bad = std::make_shared<route>();
  bad->hops = {{b_head, {0, 0}}, {c_shard, {0, 5}}, {b_tail, {5, 5}}};
  caf::anon_send(router, routes_atom::value, std::vector<route_ptr>{bad});
  auto r = generate(sys, router, greedy({1}, 5));
  REQUIRE(r);
  CHECK(r->result.error == "layer 0 is not loaded on shard [0,5)");
  for (const caf::actor& x : {a_head, a_tail, a_shard, b_head, b_tail, b_shard, c_shard, router})
    caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
  }
}

TEST_CASE("the zigzag scheduler sends a new request through the least busy partner") {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto m = stories();
  shard_options slow;
  slow.device.layer_s = 0.002;  // the long requests are still running when the last one arrives
  // Full instances 1 and 3, instance 2 loading with layers 0 and 1.
  auto a_head = sys.spawn(head_actor, m), a_tail = sys.spawn(tail_actor, m);
  auto a_shard = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, slow);
  auto c_tail = sys.spawn(tail_actor, m);
  auto c_shard = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, slow);
  shard_options loading = slow;
  loading.preload = false;
  auto b_head = sys.spawn(head_actor, m);
  auto b_shard = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, loading);
  for (int l : {0, 1}) caf::anon_send(b_shard, load_atom::value, int32_t(l), layer_ptr(m->layers[size_t(l)]));
  auto a_own = std::make_shared<route>();
  a_own->instance = 1;
  a_own->hops = {{a_head, {0, 0}, 1}, {a_shard, {0, 5}, 1}, {a_tail, {5, 5}, 1}};
  auto via = [&](caf::actor shard, caf::actor tail, uint32_t partner) {
    auto r = std::make_shared<route>();
    r->instance = 2;
    r->hops = {{b_head, {0, 0}, 2}, {b_shard, {0, 2}, 2}, {shard, {2, 5}, partner}, {tail, {5, 5}, partner}};
    return route_ptr(r);
  };
  for (std::string sched : {"zigzag", "least-loaded"}) {
    CAPTURE(sched);
    router_options ro;
    ro.scheduler = sched;
    ro.costs = {1.0, 1.0, 0.5};  // rows cost as much as a pass over the weights: instance 1 is busy
    auto router = spawn_router(sys, m, std::vector<route_ptr>{a_own}, ro);
    std::vector<expected<completion>> busy(3, make_error("not run"));
    std::vector<std::thread> ts;
    for (size_t i = 0; i < busy.size(); ++i) ts.emplace_back([&, i] { busy[i] = generate(sys, router, greedy({1}, 150)); });
    CHECK(router_until(sys, router, [](const router_stats& s) { return s.running == 3 && s.tokens >= 3; }));
    caf::anon_send(router, routes_atom::value, std::vector<route_ptr>{a_own, via(a_shard, a_tail, 1), via(c_shard, c_tail, 3)});
    CHECK(router_until(sys, router, [](const router_stats& s) { return s.routes == 3; }));
    expected<completion> last = make_error("not run");
    std::thread t([&] { last = generate(sys, router, greedy({1}, 60)); });
    CHECK(router_until(sys, router, [](const router_stats& s) { return s.running == 4; }));
    // zigzag: instance 3 idles, so the request leans on it; least-loaded takes the first of the
    // two equally loaded cooperative routes, through busy instance 1.
    auto st = stats_of<router_stats>(sys, router);
    CHECK(st.in_use_by_instance[3] == (sched == "zigzag" ? 1u : 0u));
    if (sched == "zigzag")  // ... and its KV cache for layers [2,5) lands on instance 3's shard
      CHECK(test::wait_until([&] { return stats_of<stage_stats>(sys, c_shard).kv_sequences == 1; }, 10s, 2ms));
    else
      CHECK(stats_of<stage_stats>(sys, c_shard).kv_sequences == 0);
    t.join();
    for (auto& th : ts) th.join();
    REQUIRE_MESSAGE(last, last.message());
    CHECK(last->tokens == reference({1}, 60));
    for (auto& b : busy) {
      REQUIRE_MESSAGE(b, b.message());
      CHECK(b->tokens == reference({1}, 150));
    }
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  }
  for (const caf::actor& x : {a_head, a_tail, a_shard, c_tail, c_shard, b_head, b_shard})
    caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
}

namespace {

// A burst replayed under `policy` with in-process instances on an emulated device: every request
// must complete in full; then 1.5 s idle for the instances above the minimum to go. The report
// and the events per instance (first time of each kind) are returned.
struct burst_outcome {
  scaling_report rep;
  std::map<uint32_t, std::map<std::string, double>> when;
};

burst_outcome burst_under(const std::string& policy_name, bool emulated_device = true) {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto m = stories();
  scaling_knobs k;
  k.min_instances = 1;
  k.max_instances = 3;
  k.queue_per_instance = 2;
  k.keep_alive_s = 0.4;
  k.cooldown_s = 0.2;
  k.min_share = 0.25;
  link_speeds links;
  links.network_gb_s = 1;
  auto policy = make_policy(policy_name, k, links);
  REQUIRE(policy);
  scaler_options so;
  so.layer_bytes = 60e6;  // 60 ms per layer at 1 GB/s: loading takes a visible while
  so.globals_bytes = 20e6;
  if (emulated_device) {
    so.device.layer_s = 0.001;
    so.device.per_row_s = 0.0002;
  }
  router_options ro;
  ro.max_running = 4;
  auto router = spawn_router(sys, m, std::vector<route_ptr>{}, ro);
  auto scaler = spawn_scaler(sys, m, router, std::shared_ptr<scaling_policy>(std::move(*policy)), k, so);
  auto t = gamma_trace({.n = 60, .rate = 60, .burstiness = 0.5, .prompt_max = 30, .output_min = 20, .output_max = 40});
  replay_options o;
  o.vocab_size = 512;
  auto records = replay(sys, router, *t, o);
  REQUIRE_MESSAGE(records, records.message());
  for (auto& r : *records) {
    CHECK(r.ok);
    CHECK(r.generated == r.output_tokens);
  }
  // Idle now: wait (bounded) until every instance started for the burst drained and stopped.
  caf::scoped_actor self{sys};
  burst_outcome out;
  auto settled = [&] {
    self->request(scaler, 5s, report_atom::value).receive([&](scaling_report& r) { out.rep = r; }, [](caf::error&) {});
    size_t out_n = 0, stopped = 0;
    for (auto& e : out.rep.events) {
      out_n += e.what == "scale-out";
      stopped += e.what == "stopped";
    }
    return !out.rep.instances.empty() && out.rep.instances.back().second == 1 && stopped >= out_n;
  };
  // Bounded, not a check: the cases below say what they need of the settled state (a
  // sanitizer build drains slower than a release one).
  (void)test::wait_until(settled, 15s);
  for (auto& e : out.rep.events) {
    MESSAGE(e.t << " " << e.what << " i" << e.instance << " " << e.detail);
    if (!out.when[e.instance].count(e.what)) out.when[e.instance][e.what] = e.t;
  }
  caf::anon_send_exit(scaler, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  return out;
}

}  // namespace

TEST_CASE("the scaler scales out under a burst, serves before loading ends, and drains without loss") {
  auto [rep, when] = burst_under("blitz");
  bool live = false, drained = false;
  for (auto& [id, w] : when) {
    if (w.count("scale-out") && w.count("serving") && w.count("full") && w["serving"] < w["full"]) live = true;
    if (w.count("drain") && w.count("stopped")) drained = true;
  }
  CHECK(live);     // served through a cooperative route before its last layer landed
  CHECK(drained);  // idle instances went away after keep-alive
  REQUIRE_FALSE(rep.instances.empty());
  CHECK(rep.instances.back().second == 1);
  CHECK(rep.instance_seconds > 0);
  CHECK(rep.device_seconds == doctest::Approx(rep.instance_seconds).epsilon(1e-6));  // whole devices
  CHECK(rep.to_first_layer_s.size() >= 1);
}

TEST_CASE("has-gpu grows an instance's compute share before it adds instances, and shrinks it when idle") {
  auto [rep, when] = burst_under("has-gpu");
  double first_grow = 1e9, first_out = 1e9, first_shrink = 1e9;
  for (auto& e : rep.events) {
    double from = 0, to = 0;
    if (e.what == "resize" && std::sscanf(e.detail.c_str(), "share %lf -> %lf", &from, &to) == 2) {
      if (to > from && from > 0.26 - 0.02) first_grow = std::min(first_grow, e.t);  // past the initial 1 -> 0.25
      if (to < from && e.t > first_grow) first_shrink = std::min(first_shrink, e.t);
    }
    if (e.what == "scale-out") first_out = std::min(first_out, e.t);
  }
  CHECK(when[1].count("resize"));  // the first instance starts at min_share
  CHECK(first_grow < first_out);   // vertical before horizontal
  CHECK(first_shrink < 1e9);       // and back down when idle
  CHECK(rep.device_seconds < rep.instance_seconds);  // fractions of devices cost less
}

TEST_CASE("a shard resizes its compute share, refusing what it cannot") {
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto m = stories();
  shard_options emulated;
  emulated.device.layer_s = 0.001;
  auto a = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, emulated);
  auto b = sys.spawn(loading_shard_actor, m, layer_range{0, 5}, shard_options{});
  caf::scoped_actor self{sys};
  auto ask = [&](const caf::actor& s, double share) -> expected<double> {
    expected<double> out = make_error("no answer");
    self->request(s, 5s, resize_atom::value, share)
        .receive([&](double got) { out = got; }, [&](caf::error& e) { out = make_error(describe(e)); });
    return out;
  };
  auto r = ask(a, 0.5);
  REQUIRE_MESSAGE(r, r.message());
  CHECK(*r == 0.5);
  r = ask(a, 1.5);
  REQUIRE_FALSE(r);
  CHECK(r.message().find("outside (0, 1]") != std::string::npos);
  r = ask(b, 0.5);
  REQUIRE_FALSE(r);
  CHECK(r.message().find("no compute share") != std::string::npos);
  for (const caf::actor& x : {a, b}) caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
}

TEST_CASE("has-gpu on shards that cannot resize treats them as whole devices and says why") {
  auto rep = burst_under("has-gpu", false).rep;
  std::map<uint32_t, int> refused;
  for (auto& e : rep.events) {
    if (e.what == "resize failed" && e.detail.find("no compute share") != std::string::npos) ++refused[e.instance];
    CHECK(e.what != "resize");
  }
  REQUIRE_FALSE(refused.empty());
  for (auto& [id, n] : refused) CHECK(n == 1);  // asked once, then treated as a whole device
  CHECK(rep.device_seconds == doctest::Approx(rep.instance_seconds).epsilon(1e-6));
}

TEST_CASE("the autoscale experiment runs as library code: a spec in, a result per policy out") {
  autoscale_spec spec;
  spec.model_path = test::stories_dir();
  spec.model = test::stories();
  auto t = gamma_trace(
      {.n = 12, .rate = 40, .burstiness = 0.3, .prompt_min = 4, .prompt_max = 16, .output_min = 4, .output_max = 8});
  REQUIRE(t);
  spec.requests = *t;
  spec.setup.knobs.max_instances = 3;
  spec.setup.knobs.queue_per_instance = 2;
  spec.setup.so.device.layer_s = 0.002;
  spec.setup.so.layer_bytes = 2e6;
  spec.policies = {"blitz", "stop-the-world"};
  spec.replay.vocab_size = spec.model->config.vocab_size;
  std::vector<std::string> started, logged;
  autoscale_hooks hooks;
  hooks.log = [&](const std::string& s) { logged.push_back(s); };
  hooks.starting = [&](const policy_run& r) { started.push_back(r.policy); };
  auto result = run_autoscale_experiment(spec, hooks);
  REQUIRE_MESSAGE(result, result.message());
  CHECK(started == spec.policies);
  REQUIRE(result->runs.size() == 2);
  for (auto& r : result->runs) {
    CAPTURE(r.policy);
    CHECK(r.records.size() == 12);
    CHECK(r.summary.ok == 12);
    CHECK(r.report.policy == r.policy);
    CHECK_FALSE(r.report.instances.empty());
  }
  CHECK(result->runs[0].live);
  CHECK_FALSE(result->runs[1].live);
  REQUIRE_FALSE(logged.empty());
  CHECK(logged[0].find("emulated profile") == 0);
  // The JSON results say what the structs say.
  auto j = nlohmann::json::parse(results_json(*result));
  REQUIRE(j["policies"].size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    auto& r = result->runs[i];
    auto& p = j["policies"][i];
    CHECK(p["policy"] == r.policy);
    CHECK(p["summary"]["ok"] == r.summary.ok);
    CHECK(p["summary"]["ttft_s"]["p99"].get<double>() == r.summary.ttft.p99);
    CHECK(p["scaling"]["events"].size() == r.report.events.size());
    CHECK(p["requests"].size() == r.records.size());
    CHECK(p["fault_at_s"].is_null());
  }
  // A spec that cannot run is refused before anything starts.
  spec.policies = {"nope"};
  auto bad = run_autoscale_experiment(spec);
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("unknown policy 'nope'") != std::string::npos);
  spec.policies = {"blitz"};
  spec.fault = node_fault{"n1", 1.0, SIGKILL};
  auto no_nodes = run_autoscale_experiment(spec);
  REQUIRE_FALSE(no_nodes);
  CHECK(no_nodes.message() == "--kill needs --nodes (it kills a node process)");
}

TEST_CASE("the replay experiment runs as library code and its JSON results match the records") {
  replay_spec spec;
  spec.model = test::stories();
  spec.shards = {{0, 2}, {2, spec.model->config.n_layers}};
  auto t = gamma_trace({.n = 6, .rate = 50, .prompt_min = 4, .prompt_max = 12, .output_min = 3, .output_max = 6});
  REQUIRE(t);
  spec.requests = *t;
  spec.replay.vocab_size = spec.model->config.vocab_size;
  auto r = run_replay_experiment(spec);
  REQUIRE_MESSAGE(r, r.message());
  REQUIRE(r->records.size() == 6);
  CHECK(r->summary.ok == 6);
  CHECK(r->router.finished == 6);
  uint64_t tokens = 0;
  for (size_t i = 0; i < 6; ++i) {
    CHECK(r->records[i].prompt_tokens == spec.requests.requests[i].prompt_tokens);
    CHECK(r->records[i].generated == r->records[i].output_tokens);
    tokens += uint64_t(r->records[i].generated);
  }
  CHECK(r->router.tokens == tokens);
  auto j = nlohmann::json::parse(results_json(*r));
  REQUIRE(j["requests"].size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    CHECK(j["requests"][i]["generated"] == r->records[i].generated);
    CHECK(j["requests"][i]["ttft_s"].get<double>() == r->records[i].ttft());
  }
  CHECK(j["summary"]["requests"] == 6);
  CHECK(j["router"]["tokens"] == tokens);
  // No requests: an error, not an empty result.
  spec.requests.requests.clear();
  auto none = run_replay_experiment(spec);
  REQUIRE_FALSE(none);
  CHECK(none.message() == "replay: the trace has no requests");
}
