#include "dataflow/serving/batcher.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dataflow/registry.hpp"

namespace strata {

status check_request(const generate_request& req, const model_config& c) {
  auto bad = [](std::string m) -> status { return make_error(errc::bad_request, std::move(m)); };
  if (req.prompt.empty()) return bad("empty prompt (start it with BOS)");
  if (req.logprobs > max_top_logprobs) return bad("at most 20 top logprobs per token");
  if (int(req.prompt.size()) >= c.seq_len)
    return bad("prompt of " + std::to_string(req.prompt.size()) + " tokens leaves no room in the context of " +
               std::to_string(c.seq_len));
  for (auto t : req.prompt)
    if (t < 0 || t >= c.vocab_size)
      return bad("token id " + std::to_string(t) + " outside the vocabulary of " + std::to_string(c.vocab_size));
  if (req.prompt_logprobs > max_top_logprobs) return bad("at most 20 top logprobs per prompt token");
  if (req.max_new_tokens < 0) return bad("max_new_tokens must not be negative");
  if (!(req.temperature >= 0.0f) || req.temperature > 100.0f) return bad("temperature must be in [0, 100]");
  if (!(req.top_p > 0.0f && req.top_p <= 1.0f)) return bad("top_p must be in (0, 1]");
  if (!(req.slo_ms >= 0.0f && req.slo_ms <= 1e9f)) return bad("slo_ms must be in [0, 1e9]");
  if (auto s = check_subnet(req.sub, c); !s) return s;
  return {};
}

namespace {

registry<batch_scheduler>& batch_registry() {
  static registry<batch_scheduler> r(
      "batch scheduler",
      {{"fcfs", "first come, first served (re-admitted requests first)", [](const std::vector<waiting_request>&) {
          return size_t(0);
        }},
       {"edf", "earliest deadline first (the least slack to its SLO; without one, in queue order after)",
        [](const std::vector<waiting_request>& w) {
          size_t best = 0;
          for (size_t i = 1; i < w.size(); ++i)
            if (w[i].slack_s < w[best].slack_s) best = i;
          return best;
        }}});
  return r;
}

}  // namespace

status register_batch_scheduler(batch_scheduler s) {
  if (!s.pick) return make_error("batch scheduler '" + s.name + "' has no pick function");
  return batch_registry().add(std::move(s));
}
std::vector<batch_scheduler> batch_schedulers() { return batch_registry().all(); }
expected<batch_scheduler> find_batch_scheduler(const std::string& name) { return batch_registry().find(name); }

namespace {

int64_t micros(batcher::clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

bool local_route(const route_info& r) {
  for (auto& h : r.stops)
    if (h.instance != r.instance) return false;
  return true;
}

bool route_has(const route_info& r, stage_id s) {
  for (auto& h : r.stops)
    if (h.stage == s) return true;
  return false;
}

route_shape shape_of(const route_info& r) {
  route_shape s;
  for (auto& h : r.stops) s.stops.emplace_back(h.instance, h.range.size());
  return s;
}

}  // namespace

batcher::batcher(model_config c, batcher_options o, std::function<time_point()> now)
    : c_(c), opt_(std::move(o)), readmit_(opt_.readmit), now_(std::move(now)) {
  if (auto sch = find_route_scheduler(opt_.scheduler))
    pick_ = sch->pick;
  else  // nothing can be scheduled, whatever routes arrive: every request is refused with the reason
    misconfigured_ = "route scheduler: " + sch.message();
  if (auto b = find_batch_scheduler(opt_.batch_scheduler))
    next_ = b->pick;
  else if (misconfigured_.empty())
    misconfigured_ = "batch scheduler: " + b.message();
  auto sp = find_subnet_policy(opt_.subnet_policy);
  if (sp) {
    choose_ = sp->choose;
    narrows_ = sp->narrows;
  } else if (misconfigured_.empty())
    misconfigured_ = sp.message();
  const std::string fixed = "fixed:";
  if (sp && opt_.catalogue && opt_.subnet_policy.rfind(fixed, 0) == 0 && misconfigured_.empty())
    if (auto spec = parse_subnet_spec(opt_.subnet_policy.substr(fixed.size()));
        spec && !opt_.catalogue->find(to_string(*spec)))
      misconfigured_ = "subnet policy " + opt_.subnet_policy + ": the catalogue has no subnet " + to_string(*spec);
}

// An SLO-only request's subnet, from the catalogue by the subnet policy: each subnet's time to
// the request's first token predicted as the rest of the step in flight on its route, then the
// step it joins (the running requests' decode rows plus its first prefill chunk). A mixed batch
// pays at least what its widest subnet pays, so a narrow choice beside wide rows gains less.
// Against the time left to its deadline.
void batcher::choose_subnet(request& q, route_id route) {
  q.req.choose_subnet = false;  // once: a re-admitted request keeps its subnet (its KV's shape)
  subnet_choice c;
  const auto& cat = *opt_.catalogue;
  int running_rows = 0;
  const subnet_profile* widest = nullptr;
  for (auto id : running_) {
    const auto& r = reqs_.at(id);
    if (r.path != route) continue;
    ++running_rows;
    const subnet_profile* p = profile_of(r.req.sub);
    if (p && (!widest || p->share > widest->share)) widest = p;
  }
  const int rows = running_rows + std::min(int(q.tokens.size()), opt_.max_batch_tokens);
  double wait_ms = 0;
  for (auto& [_, s] : inflight_)
    if (s.route == route && s.predicted_ms > 0)
      wait_ms = std::max(wait_ms, s.predicted_ms * step_scale_ -
                                      std::chrono::duration<double, std::milli>(now_() - s.started).count());
  for (auto& p : cat.subnets) {
    const double alone = p.latency_ms(rows, opt_.emulated_latency);
    if (alone < 0) continue;
    const double ms = widest ? std::max(alone, widest->latency_ms(rows, opt_.emulated_latency)) : alone;
    c.candidates.push_back({&p, wait_ms + ms * step_scale_, std::max(0.0, p.top1), alone});
  }
  if (c.candidates.empty()) return;  // nothing profiled: the whole model
  auto due = q.admitted + std::chrono::microseconds(int64_t(double(q.req.slo_ms) * 1000));
  c.slack_ms = std::chrono::duration<double, std::milli>(due - now_()).count();
  auto& pick = c.candidates[std::min(choose_(c), c.candidates.size() - 1)];
  q.req.sub = pick.profile->sub;
  q.chosen = pick.profile->spec;
  q.narrowable = narrows_;
  q.slo_feasible = pick.latency_ms <= c.slack_ms;
}

const subnet_profile* batcher::profile_of(const subnet& s, bool exact) const {
  if (!opt_.catalogue) return nullptr;
  for (auto& x : opt_.catalogue->subnets)
    if (x.sub == s) return &x;
  return exact ? nullptr : opt_.catalogue->find("full");
}

namespace {
// `s` with its FFN narrowed to `cap` neurons (0: as it is).
subnet narrowed(subnet s, int32_t cap, int hidden) {
  if (cap > 0 && cap < (s.ffn ? s.ffn : hidden)) s.ffn = cap == hidden ? 0 : cap;
  return s;
}
}  // namespace

// Depth and KV heads are a request's for good (its KV's shape), FFN width holds no state: when
// the step at its rows' own widths would make the earliest deadline miss (of the requests
// awaiting their first token, in the step or waiting), the SLO-only rows run at the widest FFN
// width of the catalogue that fits, else the narrowest. SuperServe's per-batch choice, on the
// part of a subnet a batch may change.
int32_t batcher::ffn_cap(const std::vector<uint64_t>& ids, size_t from) const {
  if (!opt_.catalogue) return 0;
  const auto now = now_();
  auto slack_of = [&](const request& r) {
    return r.req.slo_ms > 0 && r.generated == 0
               ? double(r.req.slo_ms) - std::chrono::duration<double, std::milli>(now - r.admitted).count()
               : std::numeric_limits<double>::infinity();
  };
  double slack = std::numeric_limits<double>::infinity();
  int rows = 0;
  const subnet_profile* floor = nullptr;  // the widest row that keeps its width
  std::vector<const request*> narrow;
  for (size_t k = from; k < ids.size(); ++k) {
    const auto& r = reqs_.at(ids[k]);
    rows += int(r.tokens.size()) - r.processed;
    slack = std::min(slack, slack_of(r));
    if (r.narrowable) narrow.push_back(&r);
    else if (auto p = profile_of(r.req.sub); p && (!floor || p->share > floor->share)) floor = p;
  }
  for (auto id : waiting_) slack = std::min(slack, slack_of(reqs_.at(id)));
  if (narrow.empty() || !std::isfinite(slack)) return 0;
  rows = std::min(rows, opt_.max_batch_tokens);
  // The step's predicted time with the narrowable rows at `cap` (-1: a width the catalogue lacks).
  auto predicted = [&](int32_t cap) {
    double worst = floor ? floor->latency_ms(rows, opt_.emulated_latency) : 0;
    for (auto* r : narrow) {
      auto p = profile_of(narrowed(r->req.sub, cap, c_.hidden_dim), true);
      if (!p) return -1.0;
      worst = std::max(worst, p->latency_ms(rows, opt_.emulated_latency));
    }
    return worst * step_scale_;
  };
  if (predicted(0) <= slack) return 0;
  std::set<int32_t> widths;  // narrower than the whole layer
  for (auto& x : opt_.catalogue->subnets)
    if (x.sub.ffn > 0) widths.insert(x.sub.ffn);
  int32_t narrowest = 0;
  for (auto it = widths.rbegin(); it != widths.rend(); ++it) {
    const double ms = predicted(*it);
    if (ms < 0) continue;
    if (ms <= slack) return *it;
    narrowest = *it;
  }
  return narrowest;
}

// The waiting request the batch scheduler starts next (removed from the queue).
uint64_t batcher::next_waiting() {
  size_t i = 0;
  if (waiting_.size() > 1) {
    std::vector<waiting_request> view;
    view.reserve(waiting_.size());
    auto now = now_();
    for (auto id : waiting_) {
      auto& q = reqs_.at(id);
      const double waited = std::chrono::duration<double>(now - q.admitted).count();
      view.push_back({id, waited, int(q.tokens.size()), q.req.max_new_tokens, q.readmitted,
                      q.req.slo_ms > 0 ? double(q.req.slo_ms) / 1000 - waited : 1e300});
    }
    i = std::min(next_(view), view.size() - 1);  // an index past the end takes the last
  }
  auto id = waiting_[i];
  waiting_.erase(waiting_.begin() + long(i));
  return id;
}

// Whether the row at position p only gives the logits that score prompt token p+1.
bool batcher::scores_row(const request& r, int p) const {
  return r.req.prompt_logprobs >= 0 && !r.prompt_scored && p + 1 < int(r.req.prompt.size()) &&
         p >= int(r.prompt_lps.size());
}

// The logit processing of a request's next token, from what it generated so far.
logit_processing batcher::processing_of(const request& r) const {
  logit_processing p;
  const auto& q = r.req;
  if (r.generated < q.min_tokens) {
    p.banned = {c_.eos_id, c_.bos_id};
    p.banned.insert(p.banned.end(), q.stop_token_ids.begin(), q.stop_token_ids.end());
  }
  p.bias = q.logit_bias;
  p.repetition = q.repetition_penalty;
  if (q.repetition_penalty != 1.0f) p.seen.assign(r.seen.begin(), r.seen.end());
  p.presence = q.presence_penalty;
  p.frequency = q.frequency_penalty;
  if (q.presence_penalty != 0 || q.frequency_penalty != 0) p.counts.assign(r.out_counts.begin(), r.out_counts.end());
  return p;
}

expected<uint64_t> batcher::admit(generate_request req, uint64_t client) {
  if (!misconfigured_.empty()) return make_error(errc::bad_request, misconfigured_);
  if (!down_.empty()) return make_error(errc::unavailable, down_);
  if (auto ok = check_request(req, c_); !ok) return ok.err();
  if (req.choose_subnet && (!opt_.catalogue || opt_.catalogue->subnets.empty()))
    return make_error(errc::bad_request, "an SLO without a subnet needs the model's subnet catalogue (strata subnets "
                                         "--json FILE, then serve --subnet-catalogue FILE)");
  if (req.choose_subnet && !(req.slo_ms > 0)) return make_error(errc::bad_request, "choosing a subnet needs an SLO");
  if (int(waiting_.size()) >= opt_.max_waiting)
    return make_error(errc::overloaded, "queue full (" + std::to_string(waiting_.size()) + " waiting)");
  uint64_t id = next_id_++;
  auto& r = reqs_[id];
  r.id = id;
  r.client = client;
  r.tokens = req.prompt;
  if (req.repetition_penalty != 1.0f) r.seen.insert(req.prompt.begin(), req.prompt.end());
  r.req = std::move(req);
  r.rng = initial_rng_state(r.req.seed);
  r.admitted = now_();
  r.cold = routes_.empty();
  waiting_.push_back(id);
  if (opt_.queue_timeout.count() > 0) out_.push_back(act::deadline{opt_.queue_timeout.count(), id});
  return id;
}

// The layer shards a route visits, each once.
std::vector<stage_id> batcher::shards_of(route_id r) const {
  std::vector<stage_id> out;
  for (auto& h : route_of(r).stops)
    if (h.range.size() > 0 && std::find(out.begin(), out.end(), h.stage) == out.end()) out.push_back(h.stage);
  return out;
}

void batcher::release_kv(route_id r, const std::vector<seq_id>& seqs) {
  if (r == 0 || seqs.empty()) return;
  out_.push_back(act::release{shards_of(r), seqs});
}

// Ends a request: tells its client (if any is left) and frees its KV cache in the shards.
void batcher::finish(uint64_t id, const std::string& reason, const std::string& err, bool unavailable) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return;
  auto& r = it->second;
  generate_result res;
  res.id = id;
  res.finish_reason = reason;
  res.error = err;
  res.unavailable = unavailable;
  res.cold_start = r.cold;
  res.subnet = r.chosen;
  res.slo_feasible = r.slo_feasible;
  if (r.narrowable) res.served.assign(r.served.begin(), r.served.end());
  if (opt_.catalogue && !r.chosen.empty() && r.generated > 0) {  // what the policy's choices cost in quality
    auto top1 = [&](const std::string& spec) {
      const auto* p = opt_.catalogue->find(spec);
      return p ? std::max(0.0, p->top1) : 0.0;
    };
    double q = 0, n = 0;
    for (auto& [spec, k] : r.served) q += top1(spec) * k, n += k;  // per step, when narrowed
    q = n > 0 ? q / n : top1(r.chosen);
    quality_ema_ = quality_ema_ < 0 ? q : 0.8 * quality_ema_ + 0.2 * q;
  }
  res.prompt_tokens = int32_t(r.req.prompt.size());
  res.generated_tokens = r.generated;
  res.ttft_us = r.generated > 0 ? micros(r.first_token - r.admitted) : 0;
  res.total_us = micros(now_() - r.admitted);
  if (r.client) out_.push_back(act::done{r.client, std::move(res)});
  ++finished_;
  // A request inside a step is released when the step returns (see on_step), never before,
  // so a release cannot overtake the step's writes to the cache.
  if (r.started && !r.in_step && !r.moving) release_kv(r.path, {r.seq});
  readmit_.forget(id);
  running_.erase(id);
  std::erase(waiting_, id);
  reqs_.erase(it);
}

bool batcher::touches_lost(route_id r) const {
  if (r == 0) return false;
  for (auto& h : route_of(r).stops)
    if (lost_.count(h.stage)) return true;
  return false;
}

// Carries out the re-admission object's decisions. A re-admitted request leaves its route (its
// surviving shards free its cache) and waits at the front of the queue with everything it has
// streamed so far as its prompt; the next step on a surviving route prefills all of it.
void batcher::apply(const readmit_actions& a) {
  for (auto& [id, why] : a.fail) {
    if (auto it = reqs_.find(id); it != reqs_.end()) it->second.in_step = it->second.moving = false;
    finish(id, "error", why);
  }
  for (auto it = a.requeue.rbegin(); it != a.requeue.rend(); ++it) {
    auto rit = reqs_.find(*it);
    if (rit == reqs_.end()) continue;
    auto& r = rit->second;
    if (r.started && !r.moving) release_kv(r.path, {r.seq});
    r.in_step = r.started = r.moving = false;
    r.path = r.migrate_to = 0;
    r.processed = 0;
    running_.erase(r.id);
    if (r.cancelled) {
      finish(r.id, "cancelled");
      continue;
    }
    std::erase(waiting_, r.id);
    waiting_.push_front(r.id);
    r.readmitted = true;
  }
  if (a.arm_grace_ms > 0) out_.push_back(act::grace{a.arm_grace_ms, a.grace_epoch});
}

// Recompute migration: the request's KV cache is freed on the old route and rebuilt on the new
// one by one prefill of everything so far (as vLLM recomputes preempted requests); the math is
// deterministic per row, so the tokens do not change.
void batcher::recompute_on(request& r, route_id to) {
  if (r.started) release_kv(r.path, {r.seq});
  r.path = to;
  r.processed = 0;
  ++migrations_;
}

// A request on a cooperative route moves to its instance's own route once that instance holds
// every layer; without it a request admitted while its instance loaded would lean on the other
// instance until it ends. With kv_migration the shards it leaves send their layers' KV cache to
// the shard that takes those layers over, and the request goes on from where it was; the move
// is asynchronous (the request sits out steps meanwhile) and falls back to recomputing.
void batcher::migrate(request& r, route_id to) {
  r.migrate_to = 0;
  act::kv_move mv{next_move_, r.seq, {}};
  bool covered = true;
  for (auto& h : route_of(r.path).stops) {
    if (h.range.size() == 0) continue;
    const route_hop* g = nullptr;
    for (auto& n : route_of(to).stops)
      if (n.range.size() > 0 && n.range.begin <= h.range.begin && h.range.end <= n.range.end) g = &n;
    if (!g) covered = false;
    else if (g->stage != h.stage) mv.parts.push_back({h.stage, g->stage, h.range});
  }
  if (!opt_.kv_migration || !covered || !r.started || r.processed == 0 || mv.parts.empty())
    return recompute_on(r, to);
  r.moving = true;
  moves_[next_move_++] = move{r.id, r.seq, r.path, to};
  out_.push_back(std::move(mv));
}

void batcher::on_kv_moved(uint64_t id, uint64_t bytes, const std::string& failure) {
  auto mit = moves_.find(id);
  if (mit == moves_.end()) return;
  auto m = mit->second;
  moves_.erase(mit);
  auto it = reqs_.find(m.request);
  if (it == reqs_.end()) {  // ended meanwhile: free both copies
    release_kv(m.from, {m.seq});
    release_kv(m.to, {m.seq});
    prune_routes();
    return;
  }
  auto& q = it->second;
  q.moving = false;
  if (touches_lost(m.from) || touches_lost(m.to)) {
    // A stage of either route was lost during the move: start over on a surviving route.
    release_kv(m.from, {m.seq});
    release_kv(m.to, {m.seq});
    q.started = false;
    apply(readmit_.on_timeout({q.id}, "a stage was lost while its KV cache moved"));
    schedule();
    return;
  }
  if (!failure.empty()) {
    release_kv(m.to, {m.seq});  // whatever part arrived
    recompute_on(q, m.to);
  } else {
    std::vector<stage_id> stale;
    auto keep = shards_of(m.to);
    for (auto s : shards_of(m.from))
      if (std::find(keep.begin(), keep.end(), s) == keep.end()) stale.push_back(s);
    if (!stale.empty()) out_.push_back(act::release{std::move(stale), {m.seq}});
    q.path = m.to;
    ++migrations_;
    ++kv_migrations_;
    kv_bytes_moved_ += bytes;
  }
  if (q.cancelled) finish(q.id, "cancelled");
  schedule();
}

void batcher::plan_migrations() {
  if (!opt_.recompute_migration) return;
  std::map<uint32_t, route_id> local;
  for (auto r : routes_)
    if (local_route(route_of(r))) local[route_of(r).instance] = r;
  for (auto id : running_) {
    auto& r = reqs_.at(id);
    if (!r.path || r.moving || local_route(route_of(r.path))) continue;
    auto it = local.find(route_of(r.path).instance);
    if (it == local.end()) continue;
    if (r.in_step) r.migrate_to = it->second;
    else migrate(r, it->second);
  }
}

// A route for the next waiting request among those whose instance has room (a route may take
// its share of max_running), as the configured route scheduler picks it; 0 when none has room.
route_id batcher::pick_route() {
  std::map<uint32_t, int> load;
  for (auto id : running_) load[route_of(reqs_.at(id).path).instance]++;
  std::vector<size_t> room;
  for (size_t i = 0; i < routes_.size(); ++i) {
    auto& r = route_of(routes_[i]);
    int cap = std::max(1, int(double(opt_.max_running) * r.share + 0.5));
    if (load[r.instance] < cap) room.push_back(i);
  }
  if (room.empty()) return 0;
  // Every route in use counts, including those no longer offered to new requests.
  route_choice c;
  c.candidates = std::move(room);
  c.costs = opt_.costs;
  std::map<route_id, size_t> index;
  for (auto id : routes_) {
    auto& r = route_of(id);
    index[id] = c.routes.size();
    c.routes.push_back(shape_of(r));
    c.instance_load.push_back(load[r.instance]);
  }
  for (auto id : running_) {
    auto p = reqs_.at(id).path;
    auto [it, fresh] = index.emplace(p, c.routes.size());
    if (fresh) {
      c.routes.push_back(shape_of(route_of(p)));
      c.instance_load.push_back(load[route_of(p).instance]);
    }
    c.routes[it->second].running++;
  }
  int i = pick_(c);
  return i >= 0 && size_t(i) < routes_.size() ? routes_[size_t(i)] : 0;
}

void batcher::schedule() {
  if (!pick_ || !next_) return;
  while (!waiting_.empty()) {
    auto r = pick_route();
    if (!r) break;
    auto id = next_waiting();
    auto& q = reqs_.at(id);
    if (q.req.choose_subnet) choose_subnet(q, r);
    q.path = r;
    q.seq = next_seq_++;
    running_.insert(id);
  }
  // One batch per route (each route is its own pipeline), up to max_inflight steps per route.
  std::map<route_id, int> busy;
  for (auto& [_, s] : inflight_) busy[s.route]++;
  std::map<route_id, std::vector<uint64_t>> ready;
  for (auto id : running_) {
    auto& r = reqs_.at(id);
    if (!r.in_step && !r.moving && !r.cancelled) ready[r.path].push_back(id);
  }
  for (auto& [path, ids] : ready) {
    size_t next = 0;
    while (next < ids.size() && busy[path] < opt_.max_inflight) {
      act::step s{next_step_++, path, {}};
      auto& rows = s.rows;
      std::vector<uint64_t> members;
      std::vector<logit_processing> procs;  // one per sampled row, kept if any does something
      bool any_proc = false, any_sub = false;
      rows.subnets = {subnet{}};
      int budget = opt_.max_batch_tokens;
      const int32_t cap = ffn_cap(ids, next);
      for (; next < ids.size() && budget > 0; ++next) {
        auto& r = reqs_.at(ids[next]);
        int todo = int(r.tokens.size()) - r.processed;
        int take = std::min(todo, budget);
        uint32_t sub = 0;
        const subnet runs = r.narrowable ? narrowed(r.req.sub, cap, c_.hidden_dim) : r.req.sub;
        if (r.narrowable)
          if (auto p = profile_of(runs, true)) r.step_spec = p->spec;
        if (!runs.full()) {
          any_sub = true;
          auto it = std::find(rows.subnets.begin(), rows.subnets.end(), runs);
          sub = uint32_t(it - rows.subnets.begin());
          if (it == rows.subnets.end()) rows.subnets.push_back(runs);
        }
        for (int i = 0; i < take; ++i) {
          const int p = r.processed + i;
          rows.seqs.push_back(r.seq);
          rows.pos.push_back(p);
          rows.tokens.push_back(r.tokens[size_t(p)]);
          rows.want.push_back(p + 1 == int(r.tokens.size()) ? 1 : 0);
          rows.row_subnet.push_back(sub);
          if (scores_row(r, p)) {  // logits only: drawn greedily, dropped (see on_step)
            rows.want.back() = 1;
            rows.sampling.push_back({0.0f, 1.0f, 0, 0, 0.0f});
            rows.rng.push_back(0);
            procs.emplace_back();
            rows.return_logits = true;
          }
        }
        if (r.processed + take == int(r.tokens.size())) {
          rows.sampling.push_back({r.req.temperature, r.req.top_p, r.req.seed, r.req.top_k, r.req.min_p});
          rows.rng.push_back(r.rng);
          procs.push_back(processing_of(r));
          any_proc |= procs.back().active();
          if (r.req.logprobs >= 0) rows.return_logits = true;  // computed here, from the logits
        }
        budget -= take;
        r.in_step = true;
        r.started = true;
        members.push_back(r.id);
      }
      if (members.empty()) break;
      if (any_proc) rows.processing = std::move(procs);
      if (!any_sub) {
        rows.subnets.clear();
        rows.row_subnet.clear();
      }
      const int step_rows = opt_.max_batch_tokens - budget;
      double predicted = -1;
      if (opt_.catalogue) {
        const subnet_profile* widest = nullptr;
        auto consider = [&](const subnet& sub) {
          if (auto p = profile_of(sub); p && (!widest || p->share > widest->share)) widest = p;
        };
        if (rows.row_subnet.empty()) consider(subnet{});
        for (auto i : rows.row_subnet) consider(rows.subnets.at(i));
        if (widest) predicted = widest->latency_ms(step_rows, opt_.emulated_latency);
      }
      inflight_.emplace(s.id, inflight_step{path, std::move(members), now_(), predicted});
      ++busy[path];
      out_.push_back(std::move(s));
    }
  }
}

bool batcher::on_step(uint64_t step, const step_return& s) {
  auto it = inflight_.find(step);
  if (it == inflight_.end()) {
    // Came back after it was given up on: its requests went on elsewhere, but it may have filled
    // caches along its route.
    if (auto l = late_.find(step); l != late_.end()) {
      std::vector<seq_id> seqs = s.seqs;
      std::sort(seqs.begin(), seqs.end());
      seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
      if (!seqs.empty()) out_.push_back(act::release{std::move(l->second), std::move(seqs)});
      late_.erase(l);
    }
    return false;
  }
  auto members = std::move(it->second.members);
  if (it->second.predicted_ms > 0) {
    const double took = std::chrono::duration<double, std::milli>(now_() - it->second.started).count();
    step_scale_ = std::clamp(0.8 * step_scale_ + 0.2 * took / it->second.predicted_ms, 1.0, 8.0);
  }
  inflight_.erase(it);
  // Rows per request and, per request, its wanted rows (index among them, position), the last
  // one its sampled token when the step reached the end of its tokens.
  std::map<seq_id, int> rows;
  std::map<seq_id, std::vector<std::pair<int, int>>> wanted;
  int w = 0;
  for (size_t r = 0; r < s.seqs.size() && r < s.pos.size() && r < s.want.size(); ++r) {
    ++rows[s.seqs[r]];
    if (s.want[r]) wanted[s.seqs[r]].emplace_back(w++, s.pos[r]);
  }
  const size_t V = size_t(c_.vocab_size);
  const bool have_logits = s.logits.size() >= size_t(w) * V;
  for (auto id : members) {
    auto rit = reqs_.find(id);
    if (rit == reqs_.end()) continue;
    auto& r = rit->second;
    r.in_step = false;
    if (!s.error.empty()) {
      finish(id, "error", s.error);
      continue;
    }
    r.processed += rows[r.seq];
    if (r.cancelled) {
      finish(id, "cancelled");
      continue;
    }
    auto& mine = wanted[r.seq];
    const bool sampled = !mine.empty() && mine.back().second + 1 == int(r.tokens.size());
    for (size_t k = 0; k + (sampled ? 1 : 0) < mine.size(); ++k) {
      auto [row, p] = mine[k];
      if (!scores_row(r, p)) continue;  // scored before a re-admission
      if (!have_logits) {
        finish(id, "error", "the tail returned no logits to score the prompt");
        break;
      }
      r.prompt_lps.push_back(logprobs_of(s.logits.data() + size_t(row) * V, c_.vocab_size,
                                         r.req.prompt[size_t(p + 1)], r.req.prompt_logprobs));
    }
    if (!reqs_.count(id)) continue;
    if (r.req.prompt_logprobs >= 0 && !r.prompt_scored && r.prompt_lps.size() + 1 == r.req.prompt.size()) {
      r.prompt_scored = true;
      out_.push_back(act::prompt_logprobs{r.client, id, std::exchange(r.prompt_lps, {})});
    }
    if (!sampled) continue;  // a prefill chunk: nothing to sample yet
    const size_t si = size_t(mine.back().first);
    if (r.req.max_new_tokens == 0) {  // the prompt was all it asked for
      finish(id, "length");
      continue;
    }
    if (si >= s.sampled.size() || si >= s.rng.size()) {
      finish(id, "error", "the tail returned no token for a sampled row");
      continue;
    }
    int tok = s.sampled[si];
    r.rng = s.rng[si];
    if ((!r.req.ignore_eos && (tok == c_.bos_id || tok == c_.eos_id)) ||
        std::find(r.req.stop_token_ids.begin(), r.req.stop_token_ids.end(), tok) != r.req.stop_token_ids.end()) {
      finish(id, "stop");
      continue;
    }
    auto now = now_();
    if (r.generated == 0) {
      r.first_token = now;
      double ttft = std::chrono::duration<double>(r.first_token - r.admitted).count();
      ttft_ema_ = ttft_ema_ == 0 ? ttft : 0.8 * ttft_ema_ + 0.2 * ttft;
    } else {
      double tbt = std::chrono::duration<double>(now - r.last_token).count();
      tbt_ema_ = tbt_ema_ == 0 ? tbt : 0.95 * tbt_ema_ + 0.05 * tbt;
    }
    r.last_token = now;
    ++r.generated;
    if (r.narrowable) ++r.served[r.step_spec];
    ++tokens_;
    r.tokens.push_back(tok);
    ++r.out_counts[tok];
    if (r.req.repetition_penalty != 1.0f) r.seen.insert(tok);
    act::token t{r.client, id, tok, std::nullopt};
    if (r.req.logprobs >= 0 && have_logits)
      t.logprobs = logprobs_of(s.logits.data() + si * V, c_.vocab_size, tok, r.req.logprobs);
    if (r.client) out_.push_back(std::move(t));
    if (r.generated >= r.req.max_new_tokens || int(r.tokens.size()) >= c_.seq_len) finish(id, "length");
  }
  for (auto id : members) {
    auto rit = reqs_.find(id);
    if (rit != reqs_.end() && rit->second.migrate_to && !rit->second.in_step)
      migrate(rit->second, rit->second.migrate_to);
  }
  schedule();
  return true;
}

void batcher::give_up(uint64_t step, route_id r) {
  late_[step] = shards_of(r);
  while (late_.size() > 4096) late_.erase(late_.begin());
}

void batcher::on_step_timeout(uint64_t step) {
  auto it = inflight_.find(step);
  if (it == inflight_.end()) return;
  auto members = std::move(it->second.members);
  give_up(step, it->second.route);
  inflight_.erase(it);
  std::erase_if(members, [&](uint64_t id) { return !reqs_.count(id); });
  // The late return (if any) frees what the step wrote: it names this attempt's sequences.
  for (auto id : members) reqs_.at(id).started = false;
  apply(readmit_.on_timeout(members, "step " + std::to_string(step) + " timed out after " +
                                         std::to_string(opt_.step_timeout.count()) + " ms"));
  schedule();
}

void batcher::set_routes(std::vector<route_info> routes) {
  routes_.clear();
  for (auto& r : routes) {
    if (r.id == 0) continue;
    known_[r.id] = r;  // a stage lost before the route arrived keeps it out
    if (!touches_lost(r.id)) routes_.push_back(r.id);
  }
  readmit_.on_routes(routes_.size());
  if (!routes_.empty()) down_.clear();
  plan_migrations();
  schedule();
  prune_routes();
}

std::string batcher::stage_name(stage_id s) const {
  for (auto& [_, r] : known_)
    for (auto& h : r.stops)
      if (h.stage == s)
        return h.range.size() > 0 ? "layer shard [" + std::to_string(h.range.begin) + "," + std::to_string(h.range.end) +
                                        ") of instance " + std::to_string(h.instance)
               : h.range.begin == 0 ? "head stage of instance " + std::to_string(h.instance)
                                    : "tail stage of instance " + std::to_string(h.instance);
  return "a stage";
}

// A stage died or hung: no route goes through it any more, and the requests that were on routes
// through it are re-admitted on the others (or fail with the reason when none can exist).
void batcher::on_stage_lost(stage_id s, const std::string& reason) {
  if (!lost_.insert(s).second) return;
  std::string why = stage_name(s) + " is down (" + reason + ")";
  const size_t offered = routes_.size();
  std::erase_if(routes_, [&](route_id r) { return route_has(route_of(r), s); });
  std::erase_if(inflight_, [&](auto& kv) {
    if (!route_has(route_of(kv.second.route), s)) return false;
    give_up(kv.first, kv.second.route);
    return true;
  });
  std::vector<uint64_t> hit;
  for (auto& [id, r] : reqs_)
    if (r.path && !r.moving && route_has(route_of(r.path), s)) hit.push_back(id);
  // A stage of an instance that no longer serves (scaled in, perhaps to zero) took nothing
  // with it: the requests waiting for the next instance go on waiting.
  if (hit.empty() && routes_.size() == offered) {
    schedule();
    prune_routes();
    return;
  }
  std::vector<uint64_t> waiting(waiting_.begin(), waiting_.end());
  apply(readmit_.on_loss(hit, waiting, !routes_.empty(), why));
  if (routes_.empty() && !readmit_.in_grace()) down_ = why;
  schedule();
  prune_routes();
}

void batcher::close(const std::string& why) {
  down_ = why;
  std::vector<uint64_t> waiting(waiting_.begin(), waiting_.end());
  apply(readmit_.close(waiting, why));
  schedule();
}

void batcher::on_queue_deadline(uint64_t request) {
  auto it = reqs_.find(request);
  if (it == reqs_.end() || it->second.generated > 0 || it->second.started ||
      std::find(waiting_.begin(), waiting_.end(), request) == waiting_.end())
    return;
  finish(request, "error",
         "no instance took the request within " + std::to_string(opt_.queue_timeout.count()) + " ms" +
             (routes_.empty() ? " (none serves yet: a cold start took longer)" : " (every instance was full)"),
         true);
}

void batcher::on_grace(uint64_t epoch) {
  std::vector<uint64_t> waiting(waiting_.begin(), waiting_.end());
  auto a = readmit_.grace_expired(epoch, waiting);
  if (a.fail.empty()) return;
  if (routes_.empty()) down_ = a.fail.front().second;
  apply(a);
}

bool batcher::cancel(uint64_t id) {
  auto it = reqs_.find(id);
  if (it == reqs_.end()) return false;
  if (it->second.in_step || it->second.moving)
    it->second.cancelled = true;  // finished when its step returns or its move ends
  else
    finish(id, "cancelled");
  return true;
}

void batcher::cancel_client(uint64_t client) {
  std::vector<uint64_t> ids;
  for (auto& [id, r] : reqs_)
    if (r.client == client) ids.push_back(id);
  for (auto id : ids) {
    reqs_.at(id).client = 0;  // no one is left to receive its tokens
    cancel(id);
  }
}

router_stats batcher::stats() const {
  router_stats s;
  s.waiting = uint32_t(waiting_.size());
  s.running = uint32_t(running_.size());
  s.routes = uint32_t(routes_.size());
  s.ttft_ema_s = ttft_ema_;
  s.tbt_ema_s = tbt_ema_;
  s.quality_ema = quality_ema_;
  std::set<uint32_t> instances;
  for (auto r : routes_) instances.insert(route_of(r).instance);
  s.kv_capacity = uint64_t(instances.size()) * uint64_t(opt_.max_running) * uint64_t(c_.seq_len);
  s.tokens = tokens_;
  s.finished = finished_;
  s.migrations = migrations_;
  s.kv_migrations = kv_migrations_;
  s.kv_bytes_moved = kv_bytes_moved_;
  s.readmissions = readmit_.readmitted();
  for (auto id : running_) {
    auto& q = reqs_.at(id);
    auto& path = route_of(q.path);
    s.kv_tokens += uint64_t(q.processed);
    s.running_by_instance[path.instance]++;
    std::set<uint32_t> touched;
    for (auto& h : path.stops) touched.insert(h.instance);
    for (auto i : touched) s.in_use_by_instance[i]++;
  }
  return s;
}

bool batcher::uses_route(route_id r) const {
  if (std::find(routes_.begin(), routes_.end(), r) != routes_.end()) return true;
  for (auto& [_, q] : reqs_)
    if (q.path == r || q.migrate_to == r) return true;
  for (auto& [_, s] : inflight_)
    if (s.route == r) return true;
  for (auto& [_, m] : moves_)
    if (m.from == r || m.to == r) return true;
  return false;
}

void batcher::prune_routes() {
  std::erase_if(known_, [&](auto& kv) { return !uses_route(kv.first); });
}

}  // namespace strata
