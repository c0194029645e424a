// Route planning for cooperative execution and the threshold policies' decisions.
#include <doctest/doctest.h>

#include "dataflow/scaling/scaling.hpp"

using namespace strata;

namespace {
instance_view inst(uint32_t id, std::vector<bool> have, bool globals = true) {
  instance_view v;
  v.id = id;
  v.have = std::move(have);
  v.globals = globals;
  return v;
}
}  // namespace

TEST_CASE("routes: local when full, cooperative while loading, pipelines between loaders") {
  std::vector<instance_view> is = {inst(1, {true, true, true, true}), inst(2, {true, false, false, false})};
  auto local = plan_route(1, is, 4);
  REQUIRE(local);
  CHECK(to_string(*local) == "i1:head -> i1[0,4) -> i1:tail");
  auto coop = plan_route(2, is, 4);
  REQUIRE(coop);
  CHECK(to_string(*coop) == "i2:head -> i2[0,1) -> i1[1,4) -> i1:tail");
  // λScale: two loaders with complementary halves serve as one pipeline, no full instance needed.
  std::vector<instance_view> pair = {inst(3, {true, true, false, false}), inst(4, {false, false, true, true})};
  auto pipe = plan_route(3, pair, 4, true);
  REQUIRE(pipe);
  CHECK(to_string(*pipe) == "i3:head -> i3[0,2) -> i4[2,4) -> i4:tail");
  // Without the classifier the tail stays home.
  pair[1].globals = false;
  CHECK(to_string(*plan_route(3, pair, 4, true)) == "i3:head -> i3[0,2) -> i4[2,4) -> i3:tail");
  // Nowhere to run layer 2: no route; no embedding yet: no route.
  std::vector<instance_view> gap = {inst(5, {true, true, false, true})};
  CHECK(plan_route(5, gap, 4).message() == "layer 2 is held by no instance");
  CHECK_FALSE(plan_route(6, {inst(6, {true, true, true, true}, false)}, 4));
  CHECK_FALSE(plan_route(9, is, 4));
  // A draining full instance is not used by new routes when another full one exists.
  is.push_back(inst(7, {true, true, true, true}));
  is[0].draining = true;
  CHECK(to_string(*plan_route(2, is, 4)) == "i2:head -> i2[0,1) -> i7[1,4) -> i7:tail");
  // Loading instances lean on different full ones.
  is[0].draining = false;
  is.push_back(inst(9, {true, false, false, false}));
  CHECK(to_string(*plan_route(2, is, 4)) != "");
  CHECK(plan_route(2, is, 4)->stops[1].instance != plan_route(9, is, 4)->stops[1].instance);
}

TEST_CASE("routes lean on the full partner asked for") {
  std::vector<instance_view> is = {inst(1, {true, true, true, true}), inst(2, {true, true, true, true}),
                                   inst(3, {true, true, false, false})};
  CHECK(to_string(*plan_route(3, is, 4, false, 1)) == "i3:head -> i3[0,2) -> i1[2,4) -> i1:tail");
  CHECK(to_string(*plan_route(3, is, 4, false, 2)) == "i3:head -> i3[0,2) -> i2[2,4) -> i2:tail");
  // Not a full instance (or unknown): the default spread.
  CHECK(to_string(*plan_route(3, is, 4, false, 3)) == to_string(*plan_route(3, is, 4)));
}

namespace {
// head, layers on each instance in order, tail.
route_shape shape(std::vector<std::pair<uint32_t, int>> stops, int running) {
  route_shape r;
  r.stops.emplace_back(stops.front().first, 0);
  for (auto& s : stops) r.stops.push_back(s);
  r.stops.emplace_back(stops.back().first, 0);
  r.running = running;
  return r;
}
}  // namespace

TEST_CASE("zigzag cost model: batched step per instance, time per token along the route") {
  split_costs c{1.0, 0.05, 0.5};
  std::vector<route_shape> rs = {shape({{1, 4}}, 10), shape({{2, 2}, {1, 2}}, 2), shape({{3, 4}}, 0)};
  auto t = step_times(rs, c);
  CHECK(t[1] == doctest::Approx(4 + 0.05 * (10 * 4 + 2 * 2)));  // one batch of the most layers
  CHECK(t[2] == doctest::Approx(2 + 0.05 * 2 * 2));
  CHECK(t.count(3) == 0);  // an idle route costs nothing
  CHECK(token_time(rs[0], t, c) == doctest::Approx(t[1]));
  CHECK(token_time(rs[1], t, c) == doctest::Approx(t[1] + t[2] + 0.5));  // one change of instance
  CHECK(total_token_time(rs, c) == doctest::Approx(10 * t[1] + 2 * token_time(rs[1], t, c)));
}

TEST_CASE("zigzag: lean on the least busy partner, split as deep as loaded, join open batches") {
  split_costs c{1.0, 0.05, 0.5};
  // Instance 3 holds 2 of 4 layers; full instances 1 (10 running) and 2 (2 running).
  std::vector<route_shape> rs = {shape({{1, 4}}, 10), shape({{2, 4}}, 2), shape({{3, 2}, {1, 2}}, 0),
                                 shape({{3, 2}, {2, 2}}, 0)};
  CHECK(pick_split(rs, {2, 3}, c) == 3);
  // A partner whose step is dominated by its rows (compute-bound): the deeper split moves work
  // off it. While rows are cheap next to a pass over the weights, a pass over the new
  // instance's own layers costs the request more than riding the partner's open batch.
  std::vector<route_shape> depth = {shape({{1, 4}}, 12), shape({{3, 1}, {1, 3}}, 0), shape({{3, 3}, {1, 1}}, 0)};
  CHECK(pick_split(depth, {1, 2}, split_costs{1.0, 0.5, 0.5}) == 2);
  CHECK(pick_split(depth, {1, 2}, c) == 1);
  // Joining a route that already runs costs its rows only; opening another batch on a busy
  // instance costs every request there a pass over more layers.
  std::vector<route_shape> open = {shape({{3, 3}, {1, 1}}, 20), shape({{3, 1}, {1, 3}}, 0)};
  CHECK(pick_split(open, {0, 1}, c) == 0);
  // With room on the full instance itself and nobody leaning on it, its own route wins (no hop).
  std::vector<route_shape> own = {shape({{1, 4}}, 1), shape({{3, 2}, {1, 2}}, 0)};
  CHECK(pick_split(own, {0, 1}, c) == 0);
  CHECK(pick_split(own, {}, c) == -1);
}

namespace {
// Knobs of the policy tests: 1..3 instances, out above 4 waiting per instance, 1 s cooldown, in
// after a 2 s keep-alive.
scaling_knobs policy_knobs() {
  scaling_knobs k;
  k.min_instances = 1;
  k.max_instances = 3;
  k.queue_per_instance = 4;
  k.keep_alive_s = 2;
  k.cooldown_s = 1;
  return k;
}

// What a fresh blitz policy adds for view `v` of one serving instance at t = 100 s.
int blitz_adds(const scaling_knobs& k, load_view v) {
  auto p = make_policy("blitz", k, link_speeds{});
  REQUIRE(p);
  v.full = 1;
  v.now = 100;
  return (*p)->decide(v).add;
}
}  // namespace

TEST_CASE("threshold policy: scale out on queue, within bounds, in after keep-alive") {
  auto k = policy_knobs();
  link_speeds l;
  auto p = make_policy("blitz", k, l);
  REQUIRE(p);
  load_view v;
  v.full = 1;
  v.waiting = 3;
  CHECK((*p)->decide(v).add == 0);  // below the threshold
  v.waiting = 9;
  CHECK((*p)->decide(v).add == 2);  // ceil(9 / 4) - 1 serving
  v.now = 0.5;
  CHECK((*p)->decide(v).add == 0);  // cooldown
  v.now = 2;
  v.full = 3;
  v.waiting = 50;
  CHECK((*p)->decide(v).add == 0);  // at max
  v.waiting = 0;
  v.idle_for_s = {{2, 2.5}, {3, 1.0}};
  auto d = (*p)->decide(v);
  CHECK(d.remove == std::vector<uint32_t>{2});
  v.full = 0;
  v.idle_for_s.clear();
  CHECK((*p)->decide(v).add == 1);  // below the minimum
  v.full = 1;
  v.ttft_ema_s = 5;  // a stale high TTFT with no queue is no reason to scale
  CHECK((*p)->decide(v).add == 0);
  v.now = 10;
  v.waiting = 1;  // ... but with one waiting request it is
  CHECK((*p)->decide(v).add == 1);
  v.now = 20;
  v.ttft_ema_s = 0;
  v.tbt_ema_s = 0.5;  // slow tokens
  CHECK((*p)->decide(v).add == 1);
  v.now = 30;
  v.tbt_ema_s = 0;
  v.kv_use = 0.95;  // caches nearly full
  CHECK((*p)->decide(v).add == 1);
  v.now = 40;
  v.kv_use = 0.5;
  CHECK((*p)->decide(v).add == 0);
  CHECK((*p)->loading().live);
  CHECK_FALSE((*make_policy("stop-the-world", k, l))->loading().live);
  CHECK((*make_policy("all-cache", k, l))->loading().gb_s == l.local_host_gb_s);
  CHECK(make_policy("magic", k, l).message().find("unknown policy 'magic'") == 0);
}

TEST_CASE("threshold policy: scale from zero and back to zero (min 0)") {
  auto k = policy_knobs();
  k.min_instances = 0;
  link_speeds l;
  for (const char* name : {"blitz", "stop-the-world", "has-gpu"}) {
    CAPTURE(name);
    auto p = make_policy(name, k, l);
    REQUIRE(p);
    load_view v;
    CHECK((*p)->decide(v).add == 0);  // nothing asked, nothing started
    v.waiting = 1;  // one request for the cold model: an instance at once, below any threshold
    CHECK((*p)->decide(v).add == 1);
    v.now = 0.1;  // no cooldown for it either
    CHECK((*p)->decide(v).add == 1);
    v.waiting = 9;  // a cold burst: as many as the queue asks for, within max
    CHECK((*p)->decide(v).add == 3);
    v.loading = 1;  // one on its way: that is no longer zero
    v.waiting = 2;
    CHECK((*p)->decide(v).add == 0);
    v.loading = 0;
    v.full = 1;
    v.waiting = 0;
    v.now = 10;
    v.idle_for_s = {{1, 2.5}};  // idle past keep-alive: back to zero
    if (std::string(name) == "has-gpu") v.share = {{1, 0.25}};  // has-gpu first shrinks to the smallest share
    CHECK((*p)->decide(v).remove == std::vector<uint32_t>{1});
  }
  k.max_instances = 0;  // a model that may not run at all never starts
  auto none = make_policy("blitz", k, l);
  load_view v;
  v.waiting = 3;
  CHECK((*none)->decide(v).add == 0);
}

// Every threshold at, just below and just above its value: "above" means strictly above, and
// the keep-alive and cooldown count from their value on.
TEST_CASE("threshold policy: each threshold's boundary, exactly") {
  auto k = policy_knobs();  // queue 4 per instance, keep-alive 2 s, cooldown 1 s, max 3
  link_speeds l;
  struct row {
    const char* what;
    int waiting;
    double ttft, tbt, kv;
    int add;
  };
  const row rows[] = {
      {"queue at its threshold", 4, 0, 0, 0, 0},
      {"queue one above", 5, 0, 0, 0, 1},
      {"ttft at the SLO", 1, k.ttft_slo_s, 0, 0, 0},
      {"ttft above the SLO", 1, k.ttft_slo_s * 1.001, 0, 0, 1},
      {"tbt at the SLO", 1, 0, k.tbt_slo_s, 0, 0},
      {"tbt above the SLO", 1, 0, k.tbt_slo_s * 1.001, 0, 1},
      {"kv use at its high mark", 1, 0, 0, k.kv_high, 0},
      {"kv use above it", 1, 0, 0, k.kv_high + 0.001, 1},
      {"no queue, every signal high", 0, 9, 9, 1, 0},
  };
  for (auto& r : rows) {
    CAPTURE(r.what);
    load_view v;
    v.waiting = r.waiting;
    v.ttft_ema_s = r.ttft;
    v.tbt_ema_s = r.tbt;
    v.kv_use = r.kv;
    CHECK(blitz_adds(k, v) == r.add);
  }
  auto p = make_policy("blitz", k, l);
  load_view v;
  v.full = 1;
  v.waiting = 9;
  v.now = 10;
  REQUIRE((*p)->decide(v).add == 2);
  v.full = 2;  // one still to come: the next decision waits out the cooldown from 10 s
  v.now = 10 + k.cooldown_s - 0.001;
  CHECK((*p)->decide(v).add == 0);
  v.now = 10 + k.cooldown_s;
  CHECK((*p)->decide(v).add == 1);
  // Keep-alive: an instance idle exactly that long goes, one idle a little less stays.
  v.full = 3;
  v.waiting = 0;
  v.idle_for_s = {{2, k.keep_alive_s}, {3, k.keep_alive_s - 0.001}};
  CHECK((*p)->decide(v).remove == std::vector<uint32_t>{2});
}

TEST_CASE("subnet-aware scaling: served quality below the floor scales out while requests run") {
  auto k = policy_knobs();
  struct row {
    const char* what;
    double min_quality, quality;
    uint32_t running, waiting;
    int loading, add;
  };
  const row rows[] = {
      {"off (0): quality alone never scales", 0, 0.2, 8, 0, 0, 0},
      {"at the floor", 0.9, 0.9, 8, 0, 0, 0},
      {"below it, no queue: out", 0.9, 0.899, 8, 0, 0, 1},
      {"below it, nothing runs (an old average): stay", 0.9, 0.5, 0, 0, 0, 0},
      {"no SLO-chosen request yet (-1): stay", 0.9, -1, 8, 0, 0, 0},
      {"below it, one already loading: wait for it", 0.9, 0.5, 8, 0, 1, 0},
      {"below it with a long queue: as many as the queue asks", 0.9, 0.5, 8, 13, 0, 2},
  };
  for (auto& r : rows) {
    CAPTURE(r.what);
    auto kk = k;
    kk.min_quality = r.min_quality;
    load_view v;
    v.running = r.running;
    v.waiting = r.waiting;
    v.loading = r.loading;
    v.quality_ema = r.quality;
    CHECK(blitz_adds(kk, v) == r.add);
  }
}

TEST_CASE("a draining instance stops only once no running request touches it") {
  // 1: one cooperative request still leans on it; 2: none (an entry of 0); 3: never used.
  CHECK(drained({1, 2, 3}, {{1, 1}, {2, 0}}) == std::vector<uint32_t>{2, 3});
  CHECK(drained({1}, {{1, 5}}).empty());
  CHECK(drained({}, {{1, 0}}).empty());  // only draining ones, never one that serves
}

TEST_CASE("lambda-pipe starts instances in pairs that load complementary halves") {
  scaling_knobs k;
  k.max_instances = 5;
  auto p = make_policy("lambda-pipe", k, link_speeds{});
  REQUIRE(p);
  load_view v;
  v.full = 1;
  v.waiting = 5;
  CHECK((*p)->decide(v).add == 2);
  CHECK((*p)->load_order(4, 0) == std::vector<int>{0, 1, 2, 3});
  CHECK((*p)->load_order(4, 1) == std::vector<int>{2, 3, 0, 1});
  CHECK((*p)->loading().pipeline);
}

TEST_CASE("has-gpu predictor: the share that meets the time-per-token SLO, in steps") {
  CHECK(predict_share(0.25, 0.15, 0.2, 0.125) == doctest::Approx(0.375));  // 0.25 * 0.15 / 0.1
  CHECK(predict_share(1.0, 0.03, 0.2, 0.25) == doctest::Approx(0.5));      // 0.3, rounded up
  CHECK(predict_share(0.75, 1.0, 0.2, 0.25) == doctest::Approx(1.0));     // at most a device
  CHECK(predict_share(0.5, 0.0, 0.2, 0.25) == doctest::Approx(0.5));      // nothing measured
  CHECK(predict_share(0.1, 0.0, 0.2, 0.25) == doctest::Approx(0.25));     // at least a step
}

TEST_CASE("has-gpu policy: vertical before horizontal, out and in") {
  auto k = policy_knobs();
  k.min_share = 0.25;
  auto p = make_policy("has-gpu", k, link_speeds{});
  REQUIRE(p);
  CHECK((*p)->initial_share() == 0.25);
  CHECK((*p)->loading().live);
  load_view v;
  v.full = 1;
  v.waiting = 9;
  v.tbt_ema_s = 0.25;  // over the 0.2 s SLO: the predictor sizes the step
  v.share = {{1, 0.25}};
  auto d = (*p)->decide(v);
  CHECK(d.add == 0);  // grows instead of adding
  CHECK(d.resize[1] == doctest::Approx(0.75));  // 0.25 * 0.25 / 0.1 = 0.625, in steps
  v.now = 0.5;
  v.share = {{1, 0.5}};
  d = (*p)->decide(v);
  CHECK(d.add == 0);  // cooling down: neither grows again nor adds
  CHECK(d.resize.empty());
  v.now = 1.5;
  v.tbt_ema_s = 0;  // a queue alone: a whole device at once
  d = (*p)->decide(v);
  CHECK(d.resize[1] == doctest::Approx(1.0));
  v.now = 3;
  v.share = {{1, 1.0}};
  d = (*p)->decide(v);
  CHECK(d.add == 2);  // every instance is whole: now horizontal
  CHECK(d.resize.empty());
  CHECK((*p)->initial_share() == 1.0);  // added for load that is already there: whole
  // A full KV cache needs another instance even below a whole device.
  v.now = 10;
  v.waiting = 1;
  v.kv_use = 0.95;
  v.share = {{1, 0.5}};
  CHECK((*p)->decide(v).add == 1);
  // In: tokens much faster than the SLO shrink a busy instance to the predicted share, at most
  // by half; idle instances halve, one keep-alive apart, and go once at min_share.
  v = {};
  v.now = 20;
  v.full = 3;
  v.tbt_ema_s = 0.01;
  v.share = {{1, 1.0}, {2, 0.25}, {3, 1.0}};
  v.idle_for_s = {{2, 3.0}, {3, 3.0}};
  d = (*p)->decide(v);
  CHECK(d.resize[1] == doctest::Approx(0.5));   // predicted 0.1 -> 0.25, halved at most
  CHECK(d.resize[3] == doctest::Approx(0.5));   // idle: halves
  CHECK(d.remove == std::vector<uint32_t>{2});  // already at min_share (never resized lately)
  v.now = 21;
  v.full = 2;
  v.share = {{1, 0.5}, {3, 0.5}};
  v.idle_for_s = {{3, 4.0}};
  d = (*p)->decide(v);
  CHECK(d.resize.empty());  // within a keep-alive of the last shrink
  v.now = 22.5;
  d = (*p)->decide(v);
  CHECK(d.resize[1] == doctest::Approx(0.25));
  CHECK(d.resize[3] == doctest::Approx(0.25));
  CHECK(d.remove.empty());  // instance 3 only now reaches min_share
  v.now = 25;
  v.share = {{1, 0.25}, {3, 0.25}};
  d = (*p)->decide(v);
  CHECK(d.remove == std::vector<uint32_t>{3});
}

TEST_CASE("policies and route schedulers come from registries that apps extend") {
  // Built-ins by name, in order; an unknown name lists what exists.
  std::vector<std::string> names;
  for (auto& p : scaling_policies()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"blitz", "lambda-pipe", "all-cache", "stop-the-world", "has-gpu"});
  CHECK(make_policy("magic", {}, {}).message() ==
        "unknown policy 'magic' (expected one of blitz, lambda-pipe, all-cache, stop-the-world, has-gpu); see strata "
        "policies");
  // An app's own policy: built by name like a built-in; a name cannot be taken twice.
  auto made = register_policy({"test-fixed", "always one instance", [](const scaling_knobs& k, const link_speeds&) {
                                 return std::unique_ptr<scaling_policy>(
                                     std::make_unique<threshold_policy>("test-fixed", load_spec{}, k));
                               }});
  REQUIRE_MESSAGE(made, made.message());
  auto p = make_policy("test-fixed", {}, {});
  REQUIRE(p);
  CHECK((*p)->name() == "test-fixed");
  CHECK(register_policy({"blitz", "", [](const scaling_knobs&, const link_speeds&) {
                           return std::unique_ptr<scaling_policy>();
                         }}).message() == "policy 'blitz' is registered already");

  // least-loaded: the candidate whose instance runs the fewest, the first on ties.
  auto ll = find_route_scheduler("least-loaded");
  REQUIRE(ll);
  route_choice c;
  c.routes.resize(4);
  c.instance_load = {3, 1, 1, 0};
  c.candidates = {0, 1, 2};  // route 3 has no room
  CHECK(ll->pick(c) == 1);
  CHECK_FALSE(ll->wants_splits);
  c.candidates.clear();
  CHECK(ll->pick(c) == -1);
  CHECK(find_route_scheduler("zigzag")->wants_splits);
  CHECK(find_route_scheduler("fifo").message() == "unknown route scheduler 'fifo' (expected one of zigzag, least-loaded)");
  REQUIRE(register_route_scheduler({"test-last", "the last candidate", [](const route_choice& x) {
                                      return x.candidates.empty() ? -1 : int(x.candidates.back());
                                    }}));
  c.candidates = {0, 2};
  CHECK(find_route_scheduler("test-last")->pick(c) == 2);
}
