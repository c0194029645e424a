// The batcher as a plain object: every event driven by hand, time from a manual clock, steps
// answered by the test. The ugly orders of events (loss during prefill, cancel during a step or a
// KV move, a step that returns after its timeout) are tables of events and expected actions.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "dataflow/serving/batcher.hpp"

#include "../test_util.hpp"

using namespace strata;

namespace {

model_config small_model() {
  model_config c;
  c.dim = 8;
  c.hidden_dim = 16;
  c.n_layers = 4;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.vocab_size = 32;
  c.seq_len = 16;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

// Instance i's own route: head 10i, one shard 10i+1 over all layers, tail 10i+9.
route_info local(uint32_t i, route_id id) {
  return {id, {{10 * i, {0, 0}, i}, {10 * i + 1, {0, 4}, i}, {10 * i + 9, {4, 4}, i}}, i, 1.0};
}

// Instance 2 while it loads: its shard 21 runs layers [0,2), instance 1's shard 11 the rest.
route_info cooperative(route_id id) {
  return {id, {{20, {0, 0}, 2}, {21, {0, 2}, 2}, {11, {2, 4}, 1}, {29, {4, 4}, 2}}, 2, 0.5};
}

struct harness {
  batcher::time_point now{};
  batcher b;
  explicit harness(batcher_options o = {}) : b(small_model(), o, [this] { return now; }) {}

  uint64_t admit(std::vector<int32_t> prompt, int max_new = 3, uint64_t client = 1) {
    generate_request q;
    q.prompt = std::move(prompt);
    q.max_new_tokens = max_new;
    auto id = b.admit(std::move(q), client);
    REQUIRE_MESSAGE(id, id.message());
    return *id;
  }
  std::vector<batcher_action> run() {
    b.schedule();
    return b.take_actions();
  }
};

using test::only;

// What the route gives back: per wanted row the token `sample(seq, pos)`, the RNG advanced by one.
step_return answer(const act::step& s, const std::function<int32_t(seq_id, int32_t)>& sample) {
  step_return r{s.rows.seqs, s.rows.pos, s.rows.want, {}, {}, {}, {}};
  size_t k = 0;
  for (size_t i = 0; i < s.rows.seqs.size(); ++i)
    if (s.rows.want[i]) {
      r.sampled.push_back(sample(s.rows.seqs[i], s.rows.pos[i]));
      r.rng.push_back(s.rows.rng[k++] + 1);
    }
  return r;
}
int32_t ten(seq_id, int32_t) { return 10; }

// A subnet catalogue of flat profiles (a step costs the same at any batch): spec, ms, top-1.
std::shared_ptr<subnet_catalogue> flat_catalogue(std::initializer_list<std::tuple<const char*, double, double>> subnets) {
  auto cat = std::make_shared<subnet_catalogue>();
  const auto c = small_model();
  for (auto& [spec, ms, top1] : subnets) {
    subnet_profile p;
    p.spec = spec;
    p.sub = *subnet_named(spec, c);
    p.share = subnet_share(p.sub, c);
    p.step_ms = {{1, ms}, {64, ms}};
    p.top1 = top1;
    cat->subnets.push_back(p);
  }
  return cat;
}

// A request that leaves its subnet to the subnet policy (slo_ms only).
generate_request slo_only(std::vector<int32_t> prompt, int max_new_tokens, float slo_ms) {
  generate_request q;
  q.prompt = std::move(prompt);
  q.max_new_tokens = max_new_tokens;
  q.slo_ms = slo_ms;
  q.choose_subnet = true;
  return q;
}

// Answers `steps` and the steps that follow them, `step_time` apart, until every request of
// `ids` is done or `rounds` rounds passed: the results of those done.
std::map<uint64_t, generate_result> answer_until_done(harness& h, std::vector<act::step> steps,
                                                      const std::set<uint64_t>& ids,
                                                      std::chrono::milliseconds step_time, int rounds) {
  std::map<uint64_t, generate_result> done;
  for (int round = 0; round < rounds && done.size() < ids.size(); ++round) {
    h.now += step_time;
    for (auto& s : steps) h.b.on_step(s.id, answer(s, ten));
    auto acts = h.b.take_actions();
    for (auto& d : only<act::done>(acts))
      if (ids.count(d.result.id)) done[d.result.id] = d.result;
    steps = only<act::step>(acts);
  }
  return done;
}

}  // namespace

TEST_CASE("batcher: check_request names what is wrong, at each boundary") {
  const auto c = small_model();
  struct row {
    const char* what;
    std::function<void(generate_request&)> edit;
    const char* error;  // empty: accepted
  };
  const std::vector<row> table = {
      {"plain", [](auto&) {}, ""},
      {"empty prompt", [](auto& q) { q.prompt.clear(); }, "empty prompt"},
      {"prompt one short of the context", [](auto& q) { q.prompt.assign(15, 5); }, ""},
      {"prompt the whole context", [](auto& q) { q.prompt.assign(16, 5); }, "leaves no room in the context of 16"},
      {"token -1", [](auto& q) { q.prompt = {1, -1}; }, "token id -1 outside the vocabulary of 32"},
      {"token = vocab", [](auto& q) { q.prompt = {1, 32}; }, "token id 32 outside"},
      {"token = vocab - 1", [](auto& q) { q.prompt = {1, 31}; }, ""},
      {"20 logprobs", [](auto& q) { q.logprobs = 20; }, ""},
      {"21 logprobs", [](auto& q) { q.logprobs = 21; }, "at most 20 top logprobs per token"},
      {"21 prompt logprobs", [](auto& q) { q.prompt_logprobs = 21; }, "per prompt token"},
      {"max_new_tokens -1", [](auto& q) { q.max_new_tokens = -1; }, "must not be negative"},
      {"max_new_tokens 0", [](auto& q) { q.max_new_tokens = 0; }, ""},
      {"temperature 100", [](auto& q) { q.temperature = 100; }, ""},
      {"temperature 100.5", [](auto& q) { q.temperature = 100.5f; }, "temperature must be in [0, 100]"},
      {"temperature NaN", [](auto& q) { q.temperature = std::nanf(""); }, "temperature"},
      {"temperature -0.1", [](auto& q) { q.temperature = -0.1f; }, "temperature"},
      {"top_p 1", [](auto& q) { q.top_p = 1; }, ""},
      {"top_p 0", [](auto& q) { q.top_p = 0; }, "top_p must be in (0, 1]"},
      {"top_p 1.01", [](auto& q) { q.top_p = 1.01f; }, "top_p"},
  };
  for (auto& r : table) {
    CAPTURE(r.what);
    generate_request q;
    q.prompt = {1, 5, 6};
    r.edit(q);
    auto s = check_request(q, c);
    if (std::string(r.error).empty()) {
      CHECK_MESSAGE(bool(s), s.message());
    } else {
      REQUIRE_FALSE(bool(s));
      CHECK(s.err().code == errc::bad_request);
      CHECK(s.message().find(r.error) != std::string::npos);
    }
  }
}

TEST_CASE("batcher: the queue holds exactly max_waiting requests, then answers overloaded") {
  batcher_options o;
  o.max_waiting = 2;
  harness h(o);  // no route yet: everything waits
  h.admit({1, 5});
  h.admit({1, 6});
  generate_request q;
  q.prompt = {1, 7};
  auto third = h.b.admit(q, 1);
  REQUIRE_FALSE(third);
  CHECK(third.err().code == errc::overloaded);
  CHECK(third.message() == "queue full (2 waiting)");
  CHECK(h.run().empty());
  h.b.set_routes({local(1, 1)});  // a route arrives: the queue drains into one step
  auto steps = only<act::step>(h.b.take_actions());
  REQUIRE(steps.size() == 1);
  CHECK(steps[0].rows.seqs.size() == 4);
  CHECK(h.b.admit(q, 1));
}

TEST_CASE("batcher: a misconfigured route scheduler refuses every request, routes or not") {
  batcher_options o;
  o.scheduler = "no-such";
  harness h(o);
  h.b.set_routes({local(1, 1)});
  generate_request q;
  q.prompt = {1, 5};
  auto id = h.b.admit(q, 1);
  REQUIRE_FALSE(id);
  CHECK(id.err().code == errc::bad_request);
  CHECK(id.message().find("route scheduler") != std::string::npos);
  CHECK(h.run().empty());
}

TEST_CASE("batcher: chunked prefill takes at most max_batch_tokens rows a step, sampling only at the end") {
  batcher_options o;
  o.max_batch_tokens = 4;
  harness h(o);
  h.b.set_routes({local(1, 1)});
  auto id = h.admit({1, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 1);  // 10 prompt rows: 4 + 4 + 2
  std::vector<size_t> rows;
  std::vector<int> sampled_rows;
  for (int i = 0; i < 3; ++i) {
    auto steps = only<act::step>(h.run());
    REQUIRE(steps.size() == 1);
    auto& s = steps[0];
    rows.push_back(s.rows.seqs.size());
    sampled_rows.push_back(int(s.rows.sampling.size()));
    CHECK(s.rows.pos.front() == 4 * i);
    CHECK(h.b.on_step(s.id, answer(s, ten)));
  }
  CHECK(rows == std::vector<size_t>{4, 4, 2});
  CHECK(sampled_rows == std::vector<int>{0, 0, 1});
  auto a = h.b.take_actions();
  auto done = only<act::done>(a);
  REQUIRE(done.size() == 1);  // max_new_tokens 1: the token, then done with "length"
  CHECK(only<act::token>(a).size() == 1);
  CHECK(done[0].result.id == id);
  CHECK(done[0].result.finish_reason == "length");
  CHECK(done[0].result.generated_tokens == 1);
  CHECK(h.b.requests() == 0);
}

TEST_CASE("batcher: a request joins the running batch between steps and each ends on its own") {
  harness h;
  h.b.set_routes({local(1, 1)});
  auto a = h.admit({1, 5}, 3);
  auto s1 = only<act::step>(h.run());
  REQUIRE(s1.size() == 1);
  auto b = h.admit({1, 6, 7}, 1);  // arrives while a's step is out
  h.b.schedule();
  CHECK(only<act::step>(h.b.take_actions()).empty());  // max_inflight 1: waits for the step
  h.b.on_step(s1[0].id, answer(s1[0], ten));
  auto s2 = only<act::step>(h.b.take_actions());
  REQUIRE(s2.size() == 1);
  CHECK(s2[0].rows.seqs.size() == 1 + 3);  // a's decode row + b's prefill
  CHECK(s2[0].rows.sampling.size() == 2);
  h.b.on_step(s2[0].id, answer(s2[0], ten));
  auto out = h.b.take_actions();
  auto done = only<act::done>(out);
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.id == b);
  auto s3 = only<act::step>(out);
  REQUIRE(s3.size() == 1);
  CHECK(s3[0].rows.seqs.size() == 1);  // a goes on alone
  h.b.on_step(s3[0].id, answer(s3[0], ten));
  done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.id == a);
  CHECK(done[0].result.generated_tokens == 3);
}

TEST_CASE("batcher: how a request ends, at each boundary") {
  struct row {
    const char* what;
    std::vector<int32_t> prompt;
    int max_new;
    std::function<void(generate_request&)> edit;
    int32_t token;  // every sampled token
    int tokens;     // streamed
    const char* reason;
  };
  std::vector<int32_t> fifteen(15, 5);
  fifteen[0] = 1;
  const std::vector<row> table = {
      {"max_new_tokens exactly", {1, 5}, 3, [](auto&) {}, 10, 3, "length"},
      {"the context ends first", fifteen, 8, [](auto&) {}, 10, 1, "length"},
      {"eos stops, unstreamed", {1, 5}, 3, [](auto&) {}, 2, 0, "stop"},
      {"bos stops (llama2.c's end of story)", {1, 5}, 3, [](auto&) {}, 1, 0, "stop"},
      {"ignore_eos goes on", {1, 5}, 3, [](auto& q) { q.ignore_eos = true; }, 2, 3, "length"},
      {"a stop token id stops even with ignore_eos", {1, 5}, 3,
       [](auto& q) { q.ignore_eos = true; q.stop_token_ids = {10}; }, 10, 0, "stop"},
      {"max_new_tokens 0 only prefills", {1, 5}, 0, [](auto&) {}, 10, 0, "length"},
  };
  for (auto& r : table) {
    CAPTURE(r.what);
    harness h;
    h.b.set_routes({local(1, 1)});
    generate_request q;
    q.prompt = r.prompt;
    q.max_new_tokens = r.max_new;
    r.edit(q);
    REQUIRE(h.b.admit(q, 7));
    int streamed = 0;
    std::vector<act::done> done;
    auto a = h.run();
    for (int guard = 0; guard < 20 && done.empty(); ++guard) {
      streamed += int(only<act::token>(a).size());
      done = only<act::done>(a);
      std::vector<batcher_action> next;
      for (auto& s : only<act::step>(a)) {
        h.b.on_step(s.id, answer(s, [&](seq_id, int32_t) { return r.token; }));
        for (auto& x : h.b.take_actions()) next.push_back(std::move(x));
      }
      a = std::move(next);
    }
    REQUIRE(done.size() == 1);
    CHECK(done[0].client == 7);
    CHECK(done[0].result.finish_reason == r.reason);
    CHECK(streamed == r.tokens);
    CHECK(done[0].result.generated_tokens == r.tokens);
  }
}

TEST_CASE("batcher: cancel while waiting ends at once, cancel during a step ends when it returns and then frees") {
  harness h;
  auto waiting = h.admit({1, 5});
  CHECK(h.b.cancel(waiting));
  auto a = h.b.take_actions();
  REQUIRE(only<act::done>(a).size() == 1);
  CHECK(only<act::release>(a).empty());  // never ran: nothing to free
  CHECK_FALSE(h.b.cancel(waiting));      // gone

  h.b.set_routes({local(1, 1)});
  auto id = h.admit({1, 5});
  auto s = only<act::step>(h.run());
  REQUIRE(s.size() == 1);
  CHECK(h.b.cancel(id));
  CHECK(h.b.take_actions().empty());  // the step still writes its cache: nothing yet
  h.b.on_step(s[0].id, answer(s[0], ten));
  a = h.b.take_actions();
  CHECK(only<act::token>(a).empty());
  auto done = only<act::done>(a);
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.finish_reason == "cancelled");
  auto rel = only<act::release>(a);
  REQUIRE(rel.size() == 1);
  CHECK(rel[0].stages == std::vector<stage_id>{11});
  CHECK(rel[0].seqs == std::vector<seq_id>{s[0].rows.seqs[0]});
}

TEST_CASE("batcher: a client that goes away has its requests cancelled, and nothing is sent to it") {
  harness h;
  h.b.set_routes({local(1, 1)});
  h.admit({1, 5}, 3, 4);
  h.admit({1, 6}, 3, 5);
  auto s = only<act::step>(h.run());
  h.b.cancel_client(4);
  h.b.on_step(s[0].id, answer(s[0], ten));
  auto a = h.b.take_actions();
  for (auto& t : only<act::token>(a)) CHECK(t.client == 5);
  CHECK(only<act::release>(a).size() == 1);  // the gone client's cache is freed
  CHECK(h.b.requests() == 1);
}

TEST_CASE("batcher: a stage lost during prefill re-admits its request on the other route, from the start") {
  batcher_options o;
  o.max_batch_tokens = 2;
  o.scheduler = "least-loaded";
  harness h(o);
  h.b.set_routes({local(1, 1), local(2, 2)});
  auto id = h.admit({1, 3, 4, 5}, 2);
  auto s = only<act::step>(h.run());
  REQUIRE(s.size() == 1);
  CHECK(s[0].route == 1);
  h.b.on_step(s[0].id, answer(s[0], ten));  // half the prompt is in route 1's cache
  s = only<act::step>(h.b.take_actions());
  REQUIRE(s.size() == 1);
  const auto first = s[0];
  CHECK(first.rows.pos == std::vector<int32_t>{2, 3});
  h.b.on_stage_lost(11, "node a died");
  auto a = h.b.take_actions();
  auto again = only<act::step>(a);
  REQUIRE(again.size() == 1);
  CHECK(again[0].route == 2);
  CHECK(again[0].rows.pos == std::vector<int32_t>{0, 1});  // prefills from the start on a fresh sequence
  CHECK(again[0].rows.seqs[0] != first.rows.seqs[0]);
  CHECK(h.b.stats().readmissions == 1);
  CHECK(only<act::done>(a).empty());
  // The lost route's step comes back late: not ours any more; only what it wrote is freed, on
  // the shards of its own route (once, however many rows the sequence had).
  CHECK_FALSE(h.b.on_step(first.id, answer(first, ten)));
  auto late = h.b.take_actions();
  REQUIRE(late.size() == 1);
  auto rel = only<act::release>(late);
  REQUIRE(rel.size() == 1);
  CHECK(rel[0].seqs == std::vector<seq_id>{first.rows.seqs[0]});
  CHECK(rel[0].stages == std::vector<stage_id>{11});  // route 1's one layer shard
  CHECK_FALSE(h.b.on_step(first.id, answer(first, ten)));  // reported twice: nothing more
  CHECK(h.b.take_actions().empty());
  CHECK(h.b.requests() == 1);
  (void)id;
}

TEST_CASE("batcher: losing the last route fails what runs and waits, naming the stage") {
  harness h;
  h.b.set_routes({local(3, 1)});
  h.admit({1, 5});
  h.run();
  h.admit({1, 6});  // waits (a step is out)
  h.b.on_stage_lost(39, "node c died");
  auto done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 2);
  for (auto& d : done) {
    CHECK(d.result.finish_reason == "error");
    CHECK(d.result.error == "tail stage of instance 3 is down (node c died)");
  }
  generate_request q;
  q.prompt = {1, 5};
  auto refused = h.b.admit(q, 1);
  REQUIRE_FALSE(refused);
  CHECK(refused.err().code == errc::unavailable);
}

TEST_CASE("batcher: with a grace period the requests wait for a route, and fail when none comes") {
  batcher_options o;
  o.readmit.grace_ms = 500;
  harness h(o);
  h.b.set_routes({local(1, 1)});
  h.admit({1, 5});
  h.run();
  h.b.on_stage_lost(11, "node a died");
  auto g = only<act::grace>(h.b.take_actions());
  REQUIRE(g.size() == 1);
  CHECK(g[0].ms == 500);
  CHECK(h.b.down().empty());  // still admitting meanwhile
  h.b.on_grace(g[0].epoch);
  auto done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.error.find("layer shard [0,4) of instance 1 is down") != std::string::npos);
}

TEST_CASE("batcher: a step that times out re-admits its members and the retry budget ends in an error") {
  batcher_options o;
  o.readmit.max_retries = 1;
  o.step_timeout = std::chrono::milliseconds(250);
  harness h(o);
  h.b.set_routes({local(1, 1)});
  h.admit({1, 5});
  auto s1 = only<act::step>(h.run());
  REQUIRE(s1.size() == 1);
  h.b.on_step_timeout(s1[0].id);
  auto s2 = only<act::step>(h.b.take_actions());
  REQUIRE(s2.size() == 1);  // tried again
  CHECK(s2[0].rows.seqs[0] != s1[0].rows.seqs[0]);
  // The first attempt returns late: what it wrote is freed, nothing else happens.
  CHECK_FALSE(h.b.on_step(s1[0].id, answer(s1[0], ten)));
  auto late = h.b.take_actions();
  REQUIRE(late.size() == 1);
  auto rel = only<act::release>(late);
  REQUIRE(rel.size() == 1);
  CHECK(rel[0].stages == std::vector<stage_id>{11});
  CHECK(rel[0].seqs == std::vector<seq_id>{s1[0].rows.seqs[0]});
  h.b.on_step_timeout(s2[0].id);
  auto done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.error.find("timed out after 250 ms") != std::string::npos);
  h.b.on_step_timeout(s2[0].id);  // a second timer for the same step does nothing
  CHECK(h.b.take_actions().empty());
}

namespace {

// A request decoding on the cooperative route of instance 2 when its own route arrives.
struct migrating {
  harness h;
  uint64_t id = 0;
  act::step out;  // the step in flight on the cooperative route
  explicit migrating(batcher_options o = {}) : h(o) {
    h.b.set_routes({cooperative(2)});
    id = h.admit({1, 5}, 4);
    auto s = only<act::step>(h.run());
    REQUIRE(s.size() == 1);
    h.b.on_step(s[0].id, answer(s[0], ten));
    auto next = only<act::step>(h.b.take_actions());
    REQUIRE(next.size() == 1);
    out = next[0];
  }
};

}  // namespace

TEST_CASE("batcher: a request moves off a cooperative route with its KV cache once its instance is whole") {
  harness probe;
  probe.b.set_routes({cooperative(2)});
  probe.admit({1, 5}, 4);
  auto s = only<act::step>(probe.run());
  REQUIRE(s.size() == 1);
  CHECK(s[0].route == 2);
  probe.b.on_step(s[0].id, answer(s[0], ten));
  auto s2 = only<act::step>(probe.b.take_actions());
  REQUIRE(s2.size() == 1);
  probe.b.set_routes({local(2, 3)});  // instance 2 holds every layer now
  CHECK(probe.b.take_actions().empty());  // the step is out: the move waits for it
  probe.b.on_step(s2[0].id, answer(s2[0], ten));
  auto a = probe.b.take_actions();
  auto mv = only<act::kv_move>(a);
  REQUIRE(mv.size() == 1);
  CHECK(only<act::step>(a).empty());  // sits out steps while its cache moves
  // Shard 21 already holds layers [0,2) of this sequence; only instance 1's part moves.
  REQUIRE(mv[0].parts.size() == 1);
  CHECK(mv[0].parts[0].from == 11);
  CHECK(mv[0].parts[0].to == 21);
  CHECK(mv[0].parts[0].layers == layer_range{2, 4});
  probe.b.on_kv_moved(mv[0].id, 4096, "");
  a = probe.b.take_actions();
  auto rel = only<act::release>(a);
  REQUIRE(rel.size() == 1);
  CHECK(rel[0].stages == std::vector<stage_id>{11});  // the shard it left
  auto next = only<act::step>(a);
  REQUIRE(next.size() == 1);
  CHECK(next[0].route == 3);
  CHECK(next[0].rows.seqs.size() == 1);  // goes on from where it was: no recompute
  auto st = probe.b.stats();
  CHECK(st.kv_migrations == 1);
  CHECK(st.kv_bytes_moved == 4096);
}

TEST_CASE("batcher: the ugly orders around a KV move") {
  auto move_of = [](harness& h, const act::step& out) {
    h.b.set_routes({local(2, 3)});
    h.b.on_step(out.id, answer(out, ten));
    auto mv = only<act::kv_move>(h.b.take_actions());
    REQUIRE(mv.size() == 1);
    return mv[0];
  };
  SUBCASE("a failed move recomputes on the new route") {
    migrating m;
    auto mv = move_of(m.h, m.out);
    m.h.b.on_kv_moved(mv.id, 0, "kvsend timed out");
    auto a = m.h.b.take_actions();
    auto next = only<act::step>(a);
    REQUIRE(next.size() == 1);
    CHECK(next[0].route == 3);
    CHECK(next[0].rows.pos.front() == 0);  // one prefill of everything so far
    CHECK(next[0].rows.seqs.size() == 4);  // prompt 2 + 2 generated
    auto rel = only<act::release>(a);
    REQUIRE(rel.size() == 2);  // what arrived on the new route, then the old route
    CHECK(m.h.b.stats().kv_migrations == 0);
    CHECK(m.h.b.stats().migrations == 1);
  }
  SUBCASE("cancel during the move ends the request when the move ends") {
    migrating m;
    auto mv = move_of(m.h, m.out);
    CHECK(m.h.b.cancel(m.id));
    CHECK(only<act::done>(m.h.b.take_actions()).empty());
    m.h.b.on_kv_moved(mv.id, 100, "");
    auto done = only<act::done>(m.h.b.take_actions());
    REQUIRE(done.size() == 1);
    CHECK(done[0].result.finish_reason == "cancelled");
  }
  SUBCASE("a stage lost during the move re-admits the request") {
    migrating m;
    auto mv = move_of(m.h, m.out);
    m.h.b.on_stage_lost(11, "node a died");
    CHECK(only<act::step>(m.h.b.take_actions()).empty());  // still moving
    m.h.b.on_kv_moved(mv.id, 100, "");
    auto a = m.h.b.take_actions();
    auto next = only<act::step>(a);
    REQUIRE(next.size() == 1);
    CHECK(next[0].route == 3);
    CHECK(next[0].rows.pos.front() == 0);
    CHECK(m.h.b.stats().readmissions == 1);
  }
  SUBCASE("a move reported twice counts once") {
    migrating m;
    auto mv = move_of(m.h, m.out);
    m.h.b.on_kv_moved(mv.id, 100, "");
    m.h.b.take_actions();
    m.h.b.on_kv_moved(mv.id, 100, "");
    CHECK(m.h.b.take_actions().empty());
    CHECK(m.h.b.stats().kv_migrations == 1);
  }
}

TEST_CASE("batcher: without KV migration a request recomputes, and the release reaches a shared shard first") {
  batcher_options o;
  o.kv_migration = false;
  migrating m(o);
  m.h.b.set_routes({local(2, 3)});
  m.h.b.on_step(m.out.id, answer(m.out, ten));
  auto a = m.h.b.take_actions();
  REQUIRE(only<act::kv_move>(a).empty());
  // The old route's release comes before the new route's first step (both may share a shard).
  size_t rel = a.size(), step = a.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::holds_alternative<act::release>(a[i]) && rel == a.size()) rel = i;
    if (std::holds_alternative<act::step>(a[i])) step = i;
  }
  REQUIRE(rel < a.size());
  REQUIRE(step < a.size());
  CHECK(rel < step);
  CHECK(std::get<act::step>(a[step]).rows.pos.front() == 0);
}

TEST_CASE("batcher: time comes from the clock it is given") {
  harness h;
  h.b.set_routes({local(1, 1)});
  h.admit({1, 5}, 2);
  auto s = only<act::step>(h.run());
  h.now += std::chrono::milliseconds(40);
  h.b.on_step(s[0].id, answer(s[0], ten));
  auto s2 = only<act::step>(h.b.take_actions());
  h.now += std::chrono::milliseconds(10);
  h.b.on_step(s2[0].id, answer(s2[0], ten));
  auto done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.ttft_us == 40000);
  CHECK(done[0].result.total_us == 50000);
  CHECK(h.b.stats().ttft_ema_s == doctest::Approx(0.04));
  CHECK(h.b.stats().tbt_ema_s == doctest::Approx(0.01));
}

TEST_CASE("batcher: a route takes its share of max_running and the rest wait for room") {
  batcher_options o;
  o.max_running = 4;
  harness h(o);
  h.b.set_routes({cooperative(2)});  // share 0.5: two requests of four
  for (int i = 0; i < 3; ++i) h.admit({1, 5}, 1);
  auto s = only<act::step>(h.run());
  REQUIRE(s.size() == 1);
  CHECK(s[0].rows.sampling.size() == 2);
  CHECK(h.b.waiting() == 1);
  CHECK(h.b.stats().running_by_instance.at(2) == 2);
  CHECK(h.b.stats().in_use_by_instance.at(1) == 2);  // its layers [2,4) run on instance 1
  h.b.on_step(s[0].id, answer(s[0], ten));            // both end (one token each)
  auto next = only<act::step>(h.b.take_actions());
  REQUIRE(next.size() == 1);
  CHECK(next[0].rows.sampling.size() == 1);  // the third got room
}

TEST_CASE("batcher: batch schedulers come from a registry and choose which waiting request starts") {
  CHECK(find_batch_scheduler("fcfs"));
  auto bad = find_batch_scheduler("nope");
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("unknown batch scheduler 'nope' (expected one of fcfs") == 0);
  // An app's own: the shortest prompt first.
  REQUIRE(register_batch_scheduler({"test-shortest-first", "the shortest prompt first", [](const std::vector<waiting_request>& w) {
                                      size_t best = 0;
                                      for (size_t i = 1; i < w.size(); ++i)
                                        if (w[i].prompt_tokens < w[best].prompt_tokens) best = i;
                                      return best;
                                    }}));
  CHECK_FALSE(register_batch_scheduler({"fcfs", "again", [](const std::vector<waiting_request>&) { return size_t(0); }}));
  for (std::string name : {"fcfs", "test-shortest-first"}) {
    CAPTURE(name);
    batcher_options o;
    o.max_running = 1;  // one at a time: the order of starts is the scheduler's
    o.batch_scheduler = name;
    harness h(o);
    auto a = h.admit({1, 5, 6, 7, 8}, 1);
    auto b = h.admit({1, 5}, 1);
    h.b.set_routes({local(1, 1)});
    auto s = only<act::step>(h.b.take_actions());
    REQUIRE(s.size() == 1);
    CHECK(s[0].rows.seqs.size() == (name == "fcfs" ? 5u : 2u));  // a first, or the shorter b
    (void)a;
    (void)b;
  }
  batcher_options o;
  o.batch_scheduler = "nope";
  harness h(o);
  generate_request q;
  q.prompt = {1, 5};
  auto refused = h.b.admit(q, 1);
  REQUIRE_FALSE(refused);
  CHECK(refused.message().find("batch scheduler: unknown batch scheduler 'nope'") == 0);
}

TEST_CASE("batcher: a queue timeout bounds a cold start and spares started requests and retired stages") {
  batcher_options o;
  o.queue_timeout = std::chrono::milliseconds(3000);
  o.readmit.grace_ms = 500;
  harness h(o);
  auto cold = h.admit({1, 5});  // no route at all: the model scales from zero
  auto a = h.b.take_actions();
  auto d = only<act::deadline>(a);
  REQUIRE(d.size() == 1);
  CHECK(d[0].ms == 3000);
  CHECK(d[0].request == cold);
  h.b.on_queue_deadline(cold);
  auto done = only<act::done>(h.b.take_actions());
  REQUIRE(done.size() == 1);
  CHECK(done[0].result.error == "no instance took the request within 3000 ms (none serves yet: a cold start took longer)");
  CHECK(h.b.requests() == 0);
  // One that started before its deadline runs on.
  h.b.set_routes({local(1, 1)});
  auto warm = h.admit({1, 5}, 1);
  auto s = only<act::step>(h.run());
  REQUIRE(s.size() == 1);
  h.b.on_queue_deadline(warm);
  CHECK(only<act::done>(h.b.take_actions()).empty());
  h.b.on_step(s[0].id, answer(s[0], ten));
  auto finished = only<act::done>(h.b.take_actions());
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].result.error.empty());
  // The instance is retired (scaled in to zero), then its stages exit: a request waiting for the
  // next instance is not failed by that, and the model is not marked down.
  h.b.set_routes({});
  h.b.take_actions();
  auto waiting = h.admit({1, 6});
  h.b.on_stage_lost(11, "instance 1 stopped");
  h.b.on_stage_lost(10, "instance 1 stopped");
  auto after = h.b.take_actions();
  CHECK(h.b.down().empty());
  CHECK(only<act::grace>(after).empty());  // nothing was lost: no countdown to failing the waiting
  for (auto& x : only<act::done>(after)) CHECK(x.result.id != waiting);
  h.b.set_routes({local(2, 2)});
  auto s2 = only<act::step>(h.run());
  REQUIRE_FALSE(s2.empty());
  CHECK(s2.back().route == 2);
  // A request that streamed tokens and waits again after losing its instance (re-admitted, in
  // the grace for a new one) is the re-admission's to end, not the queue timeout's.
  h.b.on_step(s2.back().id, answer(s2.back(), ten));  // its first token
  h.b.take_actions();
  h.b.on_stage_lost(21, "node b died");
  h.b.take_actions();
  h.b.on_queue_deadline(waiting);
  CHECK(only<act::done>(h.b.take_actions()).empty());
  CHECK(h.b.requests() == 1);
}


TEST_CASE("batcher: SLO-only requests start earliest deadline first and get the subnet SlackFit picks for their slack") {
  auto cat = flat_catalogue({{"full", 10, 1.0}, {"d3", 6, 0.7}, {"d2", 3, 0.4}});
  struct row {
    const char* policy;
    std::vector<std::pair<std::string, bool>> want;  // per start, in start order: subnet, SLO feasible
  };
  // Deadlines 100, 12 and 2 ms after admission, all at t=0; each runs alone (max_running 1) and
  // its one step takes its subnet's profiled time (so the predictions need no correction). With
  // slackfit: C starts at 0 (slack 2: nothing fits), runs d2 for 3 ms; B at 3 (slack 9) fits d3,
  // runs 6; A at 9 (slack 91) the whole model.
  for (auto& r : {row{"slackfit", {{"d2", false}, {"d3", true}, {"full", true}}},
                  row{"max-accuracy", {{"full", false}, {"full", false}, {"full", true}}},
                  row{"max-batch", {{"d2", false}, {"d2", true}, {"d2", true}}},
                  row{"fixed:d3", {{"d3", false}, {"d3", true}, {"d3", true}}}}) {
    CAPTURE(r.policy);
    batcher_options o;
    o.max_running = 1;
    o.batch_scheduler = "edf";
    o.catalogue = cat;
    o.subnet_policy = r.policy;
    harness h(o);
    std::vector<uint64_t> ids;
    for (float slo : {100.0f, 12.0f, 2.0f}) {
      auto id = h.b.admit(slo_only({1, 5}, 1, slo), 1);
      REQUIRE_MESSAGE(id, id.message());
      ids.push_back(*id);
    }
    h.b.set_routes({local(1, 1)});
    std::vector<uint64_t> order;
    auto s = only<act::step>(h.run());
    for (size_t k = 0; k < 3; ++k) {
      CAPTURE(k);
      REQUIRE(s.size() == 1);
      const auto& want = cat->find(r.want[k].first)->sub;
      // Every row of the step runs the chosen subnet (the whole model needs no table).
      if (want.full()) CHECK(s[0].rows.row_subnet.empty());
      else CHECK(s[0].rows.subnets.at(s[0].rows.row_subnet.at(0)) == want);
      h.now += std::chrono::microseconds(int64_t(cat->find(r.want[k].first)->step_ms[0].second * 1000));
      h.b.on_step(s[0].id, answer(s[0], ten));
      auto acts = h.b.take_actions();  // the request's end, and the next one's first step
      auto done = only<act::done>(acts);
      s = only<act::step>(acts);
      REQUIRE(done.size() == 1);
      order.push_back(done[0].result.id);
      CHECK(done[0].result.subnet == r.want[k].first);
      CHECK(done[0].result.slo_feasible == r.want[k].second);
    }
    CHECK(order == std::vector<uint64_t>{ids[2], ids[1], ids[0]});  // earliest deadline first
    // The served quality the scaler reads: the chosen subnets' top-1, smoothed in finishing order.
    double q = -1;
    for (auto& w : r.want) q = q < 0 ? cat->find(w.first)->top1 : 0.8 * q + 0.2 * cat->find(w.first)->top1;
    CHECK(h.b.stats().quality_ema == doctest::Approx(q));
  }
  {  // Re-admitted after its route is lost, a request keeps its subnet (its KV cache's shape), however
     // late it is by then.
    batcher_options o;
    o.catalogue = cat;
    o.scheduler = "least-loaded";
    harness h(o);
    h.b.set_routes({local(1, 1), local(2, 2)});
    generate_request q;
    q.prompt = {1, 5};
    q.max_new_tokens = 1;
    q.slo_ms = 100;
    q.choose_subnet = true;
    REQUIRE(h.b.admit(q, 1));
    auto s = only<act::step>(h.run());
    REQUIRE(s.size() == 1);
    CHECK(s[0].rows.row_subnet.empty());  // full: 10 ms fits 100
    h.now += std::chrono::milliseconds(500);  // past the deadline: slackfit would now pick d2
    h.b.on_stage_lost(10 * s[0].route + 1, "node died");
    auto again = only<act::step>(h.b.take_actions());
    REQUIRE(again.size() == 1);
    CHECK(again[0].route != s[0].route);
    CHECK(again[0].rows.row_subnet.empty());
    h.b.on_step(again[0].id, answer(again[0], ten));
    auto done = only<act::done>(h.b.take_actions());
    REQUIRE(done.size() == 1);
    CHECK(done[0].result.subnet == "full");
    CHECK(done[0].result.slo_feasible);
  }
  // The prediction counts the rest of the step in flight and the widest subnet in the batch: the
  // step of a running request is in flight when an SLO-only request arrives; what fits its slack
  // is what fits after that step, at no less than the running subnet's cost.
  struct late {
    const char* running;  // the running request's subnet (named by it)
    int arrives_ms;       // when the SLO-only one arrives; the step in flight started at 0
    float slo_ms;
    const char* want;
    bool feasible;
  };
  for (auto& r : {late{"d2", 1, 7, "d2", true},      // wait 2: d3 (6) fits 7 alone, not after the wait
                  late{"d2", 1, 8.5f, "d3", true},   // 2 + 6 fits
                  late{"full", 9, 9, "d2", false},   // wait 1, then at least full's 10: nothing fits
                  late{"full", 9, 12, "full", true}}) {  // 1 + 10 fits: then the most accurate
    CAPTURE(r.running);
    CAPTURE(r.slo_ms);
    batcher_options o;
    o.catalogue = cat;
    harness h(o);
    h.b.set_routes({local(1, 1)});
    generate_request a;
    a.prompt = {1, 5};
    a.max_new_tokens = 2;
    a.sub = cat->find(r.running)->sub;
    REQUIRE(h.b.admit(a, 1));
    auto first = only<act::step>(h.run());
    REQUIRE(first.size() == 1);
    h.now += std::chrono::milliseconds(r.arrives_ms);
    auto id = h.b.admit(slo_only({1, 7}, 1, r.slo_ms), 2);
    REQUIRE(id);
    CHECK(only<act::step>(h.run()).empty());  // one step in flight per route
    auto done = answer_until_done(h, first, {*id}, std::chrono::milliseconds(0), 5);
    REQUIRE(done.count(*id));
    CHECK(done[*id].subnet == r.want);
    CHECK(done[*id].slo_feasible == r.feasible);
  }

  // Without a catalogue an SLO-only request is refused with what to do; a fixed subnet the
  // catalogue lacks refuses every request.
  harness none;
  generate_request q;
  q.prompt = {1, 5};
  q.slo_ms = 10;
  q.choose_subnet = true;
  auto refused = none.b.admit(q, 1);
  REQUIRE_FALSE(refused);
  CHECK(refused.message().find("needs the model's subnet catalogue (strata subnets") != std::string::npos);
  batcher_options o;
  o.catalogue = cat;
  o.subnet_policy = "fixed:d1";
  harness missing(o);
  auto r2 = missing.b.admit(q, 1);
  REQUIRE_FALSE(r2);
  CHECK(r2.message() == "subnet policy fixed:d1: the catalogue has no subnet d1");
  CHECK(find_subnet_policy("nope").message().find("unknown subnet policy 'nope' (expected one of slackfit") == 0);
  CHECK(find_subnet_policy("fixed:zz").message().find("subnet 'zz': unknown part 'z'") != std::string::npos);
}

TEST_CASE("batcher: SlackFit narrows the FFN width of its requests' steps while the earliest deadline would miss") {
  auto cat = flat_catalogue({{"full", 10, 1.0}, {"w75", 7, 0.8}, {"w50", 5, 0.5}});
  // slackfit+named: beside them a request that named the whole model, never narrowed (its width
  // then sets the step's cost, so nothing but the narrowest helps).
  for (std::string policy : {"slackfit", "max-accuracy", "slackfit+named"}) {
    CAPTURE(policy);
    const bool named = policy == "slackfit+named";
    batcher_options o;
    o.catalogue = cat;
    o.subnet_policy = named ? "slackfit" : policy;
    harness h(o);
    h.b.set_routes({local(1, 1)});
    auto ida = h.b.admit(slo_only({1, 5}, 4, 1000), 1);  // a loose deadline: the whole model, then decoding
    REQUIRE(ida);
    std::set<uint64_t> ids = {*ida};
    if (named) {
      generate_request w;
      w.prompt = {1, 7};
      w.max_new_tokens = 4;
      auto idw = h.b.admit(w, 3);
      REQUIRE(idw);
      ids.insert(*idw);
    }
    auto s = only<act::step>(h.run());
    REQUIRE(s.size() == 1);
    h.now += std::chrono::milliseconds(10);
    h.b.on_step(s[0].id, answer(s[0], ten));
    s = only<act::step>(h.b.take_actions());  // a's first decode step, in flight from t=10
    REQUIRE(s.size() == 1);
    auto idb = h.b.admit(slo_only({1, 6}, 1, 17), 2);  // due at 27: behind a whole-model step nothing fits
    REQUIRE(idb);
    ids.insert(*idb);
    CHECK(only<act::step>(h.run()).empty());
    h.now += std::chrono::milliseconds(10);
    h.b.on_step(s[0].id, answer(s[0], ten));
    s = only<act::step>(h.b.take_actions());  // t=20: a's decode and b's prefill, b's slack 7
    REQUIRE(s.size() == 1);
    auto subnet_of_row = [&](size_t i) {
      return s[0].rows.row_subnet.empty() ? subnet{} : s[0].rows.subnets.at(s[0].rows.row_subnet.at(i));
    };
    const size_t last = s[0].rows.seqs.size() - 1;  // b's prefill rows come after a's decode row
    if (policy == "slackfit") {
      CHECK(subnet_of_row(0) == cat->find("w75")->sub);  // full 10 > 7: w75 (7) fits
      CHECK(subnet_of_row(last) == cat->find("w50")->sub);  // b's own choice, narrower already
    } else if (named) {
      CHECK(subnet_of_row(0) == cat->find("w50")->sub);  // nothing fits beside a whole row
      CHECK(subnet_of_row(1).full());                    // the named request keeps its width
    } else {
      CHECK(subnet_of_row(0).full());  // a fixed choice is never narrowed
    }
    auto done = answer_until_done(h, s, ids, std::chrono::milliseconds(10), 6);
    REQUIRE(done.size() == ids.size());
    using served = std::vector<std::pair<std::string, int32_t>>;
    if (named) {
      CHECK(done[*ida].served == served{{"full", 3}, {"w50", 1}});
    } else if (policy == "slackfit") {
      // a: its first token from the whole model, one from w75 while b was due, then whole again.
      CHECK(done[*ida].served == served{{"full", 3}, {"w75", 1}});
      CHECK(done[*idb].served == served{{"w50", 1}});
    } else {
      CHECK(done[*ida].served.empty());
    }
  }
}

TEST_CASE("batcher: SlackFit scales its predictions by how long steps really take, never below the profile") {
  auto cat = flat_catalogue({{"full", 10, 1.0}, {"w50", 3, 0.5}});
  // A's steps (the whole model, named) take `step_ms` each. B arrives after five of them and is
  // chosen for when the sixth returns (it waited one step: its slack is `slo` - step_ms), the
  // scale then learnt from six steps. Steps as profiled: the whole model (10) fits 15. Steps
  // twice as long: a scale of about 1.74 (17.4 > 12), nothing fits. Steps half as long do not
  // talk the profile down: 10 > 8 still (at a scale of 0.63 the whole model would fit).
  struct row {
    int step_ms;
    float slo;
    const char* want;
    bool feasible;
  };
  for (auto& r : {row{10, 25, "full", true}, row{20, 32, "w50", false}, row{5, 13, "w50", false}}) {
    CAPTURE(r.step_ms);
    const int step_ms = r.step_ms;
    batcher_options o;
    o.catalogue = cat;
    harness h(o);
    h.b.set_routes({local(1, 1)});
    generate_request a;
    a.prompt = {1, 5};
    a.max_new_tokens = 20;
    REQUIRE(h.b.admit(a, 1));
    auto s = only<act::step>(h.run());
    for (int k = 0; k < 5; ++k) {
      REQUIRE(s.size() == 1);
      h.now += std::chrono::milliseconds(step_ms);
      h.b.on_step(s[0].id, answer(s[0], ten));
      s = only<act::step>(h.b.take_actions());
    }
    auto id = h.b.admit(slo_only({1, 6}, 1, r.slo), 2);
    REQUIRE(id);
    auto done = answer_until_done(h, s, {*id}, std::chrono::milliseconds(step_ms), 4);
    REQUIRE(done.count(*id));
    CHECK(done[*id].subnet == r.want);
    CHECK(done[*id].slo_feasible == r.feasible);
  }
}

TEST_CASE("infaas-like over separately loaded variants: a loaded one that fits first, then one worth loading") {
  auto cat = flat_catalogue({{"full", 10, 0.9}, {"d3", 6, 0.8}, {"d2", 3, 0.4}});
  const auto* full = cat->find("full");
  const auto* d3 = cat->find("d3");
  const auto* d2 = cat->find("d2");
  struct row {
    const char* what;
    std::vector<variant_state> variants;
    double slo;
    const char* infaas;    // infaas-like's pick
    const char* slackfit;  // slackfit's on the same candidates (loads counted, not preferred)
  };
  const std::vector<variant_state> only_d2 = {{full, false, 0, 40}, {d3, false, 0, 20}, {d2, true, 0, 10}};
  const std::vector<variant_state> none = {{full, false, 0, 40}, {d3, false, 0, 20}, {d2, false, 0, 10}};
  const std::vector<variant_state> busy = {{full, true, 63, 40}, {d3, true, 0, 20}, {d2, true, 0, 10}};
  // Loaded d2's requests now wait 50 ms for their first token (queued behind a burst).
  const std::vector<variant_state> slow = {{full, false, 0, 40}, {d3, false, 0, 20}, {d2, true, 0, 10, 50}};
  for (auto& r : {row{"loaded d2 fits: kept, though loading full would fit", only_d2, 100, "d2", "full"},
                  row{"nothing fits: the fastest, loads counted", only_d2, 2, "d2", "d2"},
                  row{"nothing fits, the loaded one measured slowest: the fastest to load and run", slow, 5, "d3", "d3"},
                  row{"none loaded: the most accurate whose load fits", none, 30, "d3", "d3"},
                  row{"none loaded, none fits: the fastest", none, 5, "d2", "d2"},
                  row{"all loaded: the most accurate that fits", busy, 9, "d3", "d3"},
                  row{"the loaded one is measured too slow: load one that fits", slow, 30, "d3", "d3"}}) {
    CAPTURE(r.what);
    auto c = variant_choice(r.variants, r.slo, false);
    REQUIRE(c.candidates.size() == r.variants.size());
    for (size_t i = 0; i < c.candidates.size(); ++i) {
      auto& v = r.variants[i];
      CHECK(c.candidates[i].loaded == v.loaded);
      CHECK(c.candidates[i].latency_ms ==
            doctest::Approx(std::max(v.profile->step_ms[0].second, v.loaded ? v.ttft_ms : 0) + (v.loaded ? 0 : v.load_ms)));
    }
    CHECK(c.slack_ms == r.slo);
    CHECK(c.candidates[find_subnet_policy("infaas-like")->choose(c)].profile->spec == r.infaas);
    CHECK(c.candidates[find_subnet_policy("slackfit")->choose(c)].profile->spec == r.slackfit);
  }
}

TEST_CASE("subnet policies on hand-made choices: fits, ties, nothing fits") {
  subnet_profile a, b, c;
  a.spec = "full";
  b.spec = "d2";
  c.spec = "d3";
  struct row {
    const char* policy;
    double slack;
    size_t want;
  };
  // full: 10 ms, 0.9; d2: 5 ms, 0.6; d3: 5 ms, 0.8 (as fast as d2, better).
  subnet_choice ch{{{&a, 10, 0.9}, {&b, 5, 0.6}, {&c, 5, 0.8}}, 0};
  for (auto& r : {row{"slackfit", 20, 0}, row{"slackfit", 10, 0}, row{"slackfit", 9.99, 2}, row{"slackfit", 5, 2},
                  row{"slackfit", 4, 2} /* none fits: the fastest, the better of a tie */, row{"slackfit", -3, 2},
                  row{"max-accuracy", 1, 0}, row{"max-batch", 100, 2}, row{"fixed:d2", 100, 1},
                  row{"fixed:d1", 100, 2} /* not a candidate: the fastest */}) {
    CAPTURE(r.policy);
    CAPTURE(r.slack);
    ch.slack_ms = r.slack;
    auto p = find_subnet_policy(r.policy);
    REQUIRE(p);
    CHECK(p->choose(ch) == r.want);
  }
}
