#include "actors/router.hpp"

#include <deque>
#include <map>
#include <set>

#include "dataflow/serving/readmission.hpp"

namespace strata {

namespace {

using clock = std::chrono::steady_clock;

struct request_state {
  uint64_t id = 0;
  seq_id seq = 0;  // its KV cache's sequence in the shards: fresh per attempt, so the late return
                   // of a step from a lost attempt cannot free the cache of the next one
  caf::actor client;
  generate_request req;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  std::map<int32_t, int32_t> out_counts;  // generated token -> occurrences (penalties)
  std::set<int32_t> seen;                 // distinct prompt and generated tokens (repetition penalty only)
  std::vector<token_logprobs> prompt_lps;  // prompt_logprobs so far: entry p scores prompt token p+1
  bool prompt_scored = false;              // prompt_lps sent (re-admission does not score again)
  int processed = 0;            // positions already in the KV cache
  int generated = 0;
  uint64_t rng = 0;
  route_ptr path;               // fixed once running: its KV cache lives along this route
  route_ptr migrate_to;         // move here when the current step returns (see migrate)
  bool in_step = false;
  bool moving = false;  // its KV cache is moving to migrate_to (KV migration)
  bool cancelled = false;
  bool started = false;  // has (or may have) KV state in the shards
  clock::time_point admitted;
  clock::time_point first_token;
  clock::time_point last_token;
};

struct inflight_step {
  route_ptr path;
  std::vector<uint64_t> members;
};

struct router_state {
  model_ptr m;
  std::vector<route_ptr> routes;  // where new requests may start
  router_options opt;
  std::map<uint64_t, request_state> reqs;
  std::deque<uint64_t> waiting;
  std::set<uint64_t> running;
  std::map<uint64_t, inflight_step> inflight;  // step id -> step
  std::map<caf::actor_addr, int> clients;      // monitored clients -> live requests
  std::set<caf::actor_addr> monitored;         // stage actors
  std::set<caf::actor_addr> lost;              // stages known dead or hung: no route through them
  readmission readmit;
  std::function<int(const route_choice&)> pick;  // the route scheduler's
  std::string misconfigured;  // set when opt.scheduler names no scheduler: every request is refused
  std::set<caf::actor_addr> wake;                 // told (once) when the next request is admitted
  uint64_t next_id = 1;
  seq_id next_seq = 1;
  uint64_t next_step = 1;
  std::string down;  // set when no route is left: the model no longer serves
  // Load signals for a scaler.
  double ttft_ema = 0;
  double tbt_ema = 0;
  uint64_t tokens = 0;
  uint64_t finished = 0;
  uint64_t migrations = 0;
  uint64_t kv_migrations = 0;
  uint64_t kv_bytes_moved = 0;
  static inline const char* name = "strata.router";
};

using router_actor = caf::stateful_actor<router_state>;

// Whether the row at position p only gives the logits that score prompt token p+1.
bool scores_row(const request_state& r, int p) {
  return r.req.prompt_logprobs >= 0 && !r.prompt_scored && p + 1 < int(r.req.prompt.size()) &&
         p >= int(r.prompt_lps.size());
}

// The logit processing of a request's next token, from what it generated so far.
logit_processing processing_of(const model_config& c, const request_state& r) {
  logit_processing p;
  const auto& q = r.req;
  if (r.generated < q.min_tokens) {
    p.banned = {c.eos_id, c.bos_id};
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

int64_t micros(clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

// The layer shards a route visits, each once.
std::vector<caf::actor> shards_of(const route_ptr& r) {
  std::vector<caf::actor> out;
  for (auto& h : r->hops)
    if (h.range.size() > 0 && std::find(out.begin(), out.end(), h.actor) == out.end()) out.push_back(h.actor);
  return out;
}

void release_on(router_actor* self, const std::vector<caf::actor>& shards, const std::vector<seq_id>& seqs) {
  if (seqs.empty()) return;
  for (auto& a : shards) self->send(a, release_atom::value, seqs);
}

void release_kv(router_actor* self, const route_ptr& path, const std::vector<seq_id>& seqs) {
  if (path) release_on(self, shards_of(path), seqs);
}

// Ends a request: tells its client (if alive) and frees its KV cache in the shards.
void finish(router_actor* self, uint64_t id, const std::string& reason, const std::string& err = {}) {
  auto& st = self->state;
  auto it = st.reqs.find(id);
  if (it == st.reqs.end()) return;
  auto& r = it->second;
  generate_result res;
  res.id = id;
  res.finish_reason = reason;
  res.error = err;
  res.prompt_tokens = int32_t(r.req.prompt.size());
  res.generated_tokens = r.generated;
  res.ttft_us = r.generated > 0 ? micros(r.first_token - r.admitted) : 0;
  res.total_us = micros(clock::now() - r.admitted);
  if (r.client) {
    self->send(r.client, done_atom::value, res);
    auto c = st.clients.find(r.client.address());
    if (c != st.clients.end() && --c->second == 0) {
      self->demonitor(r.client);
      st.clients.erase(c);
    }
  }
  ++st.finished;
  // A request inside a step is released when the step returns (see on_step), never before,
  // so a release cannot overtake the step's writes to the cache.
  if (r.started && !r.in_step && !r.moving) release_kv(self, r.path, {r.seq});
  st.readmit.forget(id);
  st.running.erase(id);
  std::erase(st.waiting, id);
  st.reqs.erase(it);
}

bool local_route(const route_ptr& r) {
  for (auto& h : r->hops)
    if (h.instance != r->instance) return false;
  return true;
}

void schedule(router_actor* self);

bool touches_lost(router_actor* self, const route_ptr& r) {
  if (!r) return false;
  for (auto& h : r->hops)
    if (self->state.lost.count(h.actor.address())) return true;
  return false;
}

// Carries out the re-admission object's decisions. A re-admitted request leaves its route (its
// surviving shards free its cache) and waits at the front of the queue with everything it has
// streamed so far as its prompt; the next step on a surviving route prefills all of it.
void apply(router_actor* self, const readmit_actions& a) {
  auto& st = self->state;
  for (auto& [id, why] : a.fail) {
    if (auto it = st.reqs.find(id); it != st.reqs.end()) it->second.in_step = it->second.moving = false;
    finish(self, id, "error", why);
  }
  for (auto it = a.requeue.rbegin(); it != a.requeue.rend(); ++it) {
    auto rit = st.reqs.find(*it);
    if (rit == st.reqs.end()) continue;
    auto& r = rit->second;
    if (r.started && !r.moving) release_kv(self, r.path, {r.seq});
    r.in_step = r.started = r.moving = false;
    r.path = r.migrate_to = nullptr;
    r.processed = 0;
    st.running.erase(r.id);
    if (r.cancelled) {
      finish(self, r.id, "cancelled");
      continue;
    }
    std::erase(st.waiting, r.id);
    st.waiting.push_front(r.id);
  }
  if (a.arm_grace_ms > 0)
    self->delayed_send(self, std::chrono::milliseconds(a.arm_grace_ms), grace_atom::value, a.grace_epoch);
}

// Recompute migration: the request's KV cache is freed on the old route and rebuilt on the new
// one by one prefill of everything so far (as vLLM recomputes preempted requests); the math is
// deterministic per row, so the tokens do not change.
void recompute_on(router_actor* self, request_state& r, route_ptr to) {
  if (r.started) release_kv(self, r.path, {r.seq});
  r.path = std::move(to);
  r.processed = 0;
  ++self->state.migrations;
}

// A request on a cooperative route moves to its instance's own route once that instance holds
// every layer; without it a request admitted while its instance loaded would lean on the other
// instance until it ends. With kv_migration the shards it leaves send their layers' KV cache to
// the shard that takes those layers over, and the request goes on from where it was; the move
// is asynchronous (the request sits out steps meanwhile) and falls back to recomputing.
void migrate(router_actor* self, request_state& r, route_ptr to) {
  r.migrate_to = nullptr;
  struct move {
    caf::actor from, to;
    layer_range layers;
  };
  std::vector<move> moves;
  bool covered = true;
  for (auto& h : r.path->hops) {
    if (h.range.size() == 0) continue;
    const hop* g = nullptr;
    for (auto& n : to->hops)
      if (n.range.size() > 0 && n.range.begin <= h.range.begin && h.range.end <= n.range.end) g = &n;
    if (!g) covered = false;
    else if (g->actor != h.actor) moves.push_back({h.actor, g->actor, h.range});
  }
  if (!self->state.opt.kv_migration || !covered || !r.started || r.processed == 0 || moves.empty())
    return recompute_on(self, r, std::move(to));
  r.moving = true;
  auto id = r.id;
  auto seq = r.seq;
  auto from_path = r.path;
  auto left = std::make_shared<size_t>(moves.size());
  auto bytes = std::make_shared<uint64_t>(0);
  auto failure = std::make_shared<std::string>();
  auto done = [=] {
    if (--*left > 0) return;
    auto& st = self->state;
    auto it = st.reqs.find(id);
    if (it == st.reqs.end()) {  // ended meanwhile: free both copies
      release_kv(self, from_path, {seq});
      release_kv(self, to, {seq});
      return;
    }
    auto& q = it->second;
    q.moving = false;
    if (touches_lost(self, from_path) || touches_lost(self, to)) {
      // A stage of either route was lost during the move: start over on a surviving route.
      release_kv(self, from_path, {seq});
      release_kv(self, to, {seq});
      q.started = false;
      apply(self, st.readmit.on_timeout({id}, "a stage was lost while its KV cache moved"));
      schedule(self);
      return;
    }
    if (!failure->empty()) {
      release_kv(self, to, {seq});  // whatever part arrived
      recompute_on(self, q, to);
    } else {
      std::vector<caf::actor> stale;
      auto keep = shards_of(to);
      for (auto& a : shards_of(from_path))
        if (std::find(keep.begin(), keep.end(), a) == keep.end()) stale.push_back(a);
      release_on(self, stale, {seq});
      q.path = to;
      ++st.migrations;
      ++st.kv_migrations;
      st.kv_bytes_moved += *bytes;
    }
    if (q.cancelled) finish(self, id, "cancelled");
    schedule(self);
  };
  for (auto& mv : moves)
    self->request(mv.from, kv_move_timeout + std::chrono::seconds(5), kvsend_atom::value, seq,
                  int32_t(mv.layers.begin), int32_t(mv.layers.end), mv.to)
        .then(
            [=](uint64_t n) {
              *bytes += n;
              done();
            },
            [=](caf::error& e) {
              *failure = describe(e);
              done();
            });
}

void plan_migrations(router_actor* self) {
  auto& st = self->state;
  if (!st.opt.recompute_migration) return;
  std::map<uint32_t, route_ptr> local;
  for (auto& r : st.routes)
    if (local_route(r)) local[r->instance] = r;
  for (auto id : st.running) {
    auto& r = st.reqs[id];
    if (!r.path || r.moving || local_route(r.path)) continue;
    auto it = local.find(r.path->instance);
    if (it == local.end()) continue;
    if (r.in_step) r.migrate_to = it->second;
    else migrate(self, r, it->second);
  }
}

void watch(router_actor* self, const route_ptr& r) {
  for (auto& h : r->hops)
    if (self->state.monitored.insert(h.actor.address()).second) self->monitor(h.actor);
}

route_shape shape_of(const route_ptr& r) {
  route_shape s;
  for (auto& h : r->hops) s.stops.emplace_back(h.instance, h.range.size());
  return s;
}

// A route for the next waiting request among those whose instance has room (a route may take
// its share of max_running), as the configured route scheduler picks it.
route_ptr pick_route(router_actor* self) {
  auto& st = self->state;
  std::map<uint32_t, int> load;
  for (auto id : st.running) load[st.reqs[id].path->instance]++;
  std::vector<size_t> room;
  for (size_t i = 0; i < st.routes.size(); ++i) {
    auto& r = st.routes[i];
    int cap = std::max(1, int(double(st.opt.max_running) * r->share + 0.5));
    if (load[r->instance] < cap) room.push_back(i);
  }
  if (room.empty()) return nullptr;
  // Every route in use counts, including those no longer offered to new requests.
  route_choice c;
  c.candidates = std::move(room);
  c.costs = st.opt.costs;
  std::map<const route*, size_t> index;
  for (auto& r : st.routes) {
    index[r.get()] = c.routes.size();
    c.routes.push_back(shape_of(r));
    c.instance_load.push_back(load[r->instance]);
  }
  for (auto id : st.running) {
    auto& p = st.reqs[id].path;
    auto [it, fresh] = index.emplace(p.get(), c.routes.size());
    if (fresh) {
      c.routes.push_back(shape_of(p));
      c.instance_load.push_back(load[p->instance]);
    }
    c.routes[it->second].running++;
  }
  int i = st.pick(c);
  return i >= 0 && size_t(i) < st.routes.size() ? st.routes[size_t(i)] : nullptr;
}

void schedule(router_actor* self) {
  auto& st = self->state;
  while (!st.waiting.empty()) {
    auto r = pick_route(self);
    if (!r) break;
    auto id = st.waiting.front();
    st.waiting.pop_front();
    auto& q = st.reqs[id];
    q.path = r;
    q.seq = st.next_seq++;
    st.running.insert(id);
  }
  // One batch per route (each route is its own pipeline), up to max_inflight steps per route.
  std::map<route_ptr, int> busy;
  for (auto& [_, s] : st.inflight) busy[s.path]++;
  std::map<route_ptr, std::vector<uint64_t>> ready;
  for (auto id : st.running) {
    auto& r = st.reqs[id];
    if (!r.in_step && !r.moving && !r.cancelled) ready[r.path].push_back(id);
  }
  for (auto& [path, ids] : ready) {
    size_t next = 0;
    while (next < ids.size() && busy[path] < st.opt.max_inflight) {
      auto s = std::make_shared<step_batch>();
      s->id = st.next_step++;
      s->path = path;
      s->reply_to = caf::actor_cast<caf::actor>(self);
      std::vector<uint64_t> members;
      std::vector<logit_processing> procs;  // one per sampled row, kept if any does something
      bool any_proc = false;
      int budget = st.opt.max_batch_tokens;
      for (; next < ids.size() && budget > 0; ++next) {
        auto& r = st.reqs[ids[next]];
        int todo = int(r.tokens.size()) - r.processed;
        int take = std::min(todo, budget);
        for (int i = 0; i < take; ++i) {
          const int p = r.processed + i;
          s->seqs.push_back(r.seq);
          s->pos.push_back(p);
          s->tokens.push_back(r.tokens[size_t(p)]);
          s->want.push_back(p + 1 == int(r.tokens.size()) ? 1 : 0);
          if (scores_row(r, p)) {  // logits only: drawn greedily, dropped (see on_step)
            s->want.back() = 1;
            s->sampling.push_back({0.0f, 1.0f, 0, 0, 0.0f});
            s->rng.push_back(0);
            procs.emplace_back();
            s->return_logits = true;
          }
        }
        if (r.processed + take == int(r.tokens.size())) {
          s->sampling.push_back({r.req.temperature, r.req.top_p, r.req.seed, r.req.top_k, r.req.min_p});
          s->rng.push_back(r.rng);
          procs.push_back(processing_of(st.m->config, r));
          any_proc |= procs.back().active();
          if (r.req.logprobs >= 0) s->return_logits = true;  // the router computes them
        }
        budget -= take;
        r.in_step = true;
        r.started = true;
        members.push_back(r.id);
      }
      if (members.empty()) break;
      if (any_proc) s->processing = std::move(procs);
      st.inflight.emplace(s->id, inflight_step{path, std::move(members)});
      ++busy[path];
      self->delayed_send(self, st.opt.step_timeout, timeout_atom::value, s->id);
      send_step(self, path->hops[0].actor, std::move(s));
    }
  }
}

void on_step(router_actor* self, step_ptr& s) {
  auto& st = self->state;
  auto it = st.inflight.find(s->id);
  if (it == st.inflight.end()) {
    // Came back after its timeout: its requests are gone, but it may have refilled caches.
    std::vector<seq_id> seqs(s->seqs.begin(), s->seqs.end());
    std::sort(seqs.begin(), seqs.end());
    seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
    release_kv(self, s->path, seqs);
    return;
  }
  auto members = std::move(it->second.members);
  st.inflight.erase(it);
  // Rows per request and, per request, its wanted rows (index among them, position), the last
  // one its sampled token when the step reached the end of its tokens.
  std::map<seq_id, int> rows;
  std::map<seq_id, std::vector<std::pair<int, int>>> wanted;
  int w = 0;
  for (int r = 0; r < s->rows(); ++r) {
    ++rows[s->seqs[size_t(r)]];
    if (s->want[size_t(r)]) wanted[s->seqs[size_t(r)]].emplace_back(w++, s->pos[size_t(r)]);
  }
  const auto& c = st.m->config;
  const size_t V = size_t(c.vocab_size);
  const bool have_logits = s->logits.size() >= size_t(w) * V;
  for (auto id : members) {
    auto rit = st.reqs.find(id);
    if (rit == st.reqs.end()) continue;
    auto& r = rit->second;
    r.in_step = false;
    if (!s->error.empty()) {
      finish(self, id, "error", s->error);
      continue;
    }
    r.processed += rows[r.seq];
    if (r.cancelled) {
      finish(self, id, "cancelled");
      continue;
    }
    auto& mine = wanted[r.seq];
    const bool sampled = !mine.empty() && mine.back().second + 1 == int(r.tokens.size());
    for (size_t k = 0; k + (sampled ? 1 : 0) < mine.size(); ++k) {
      auto [row, p] = mine[k];
      if (!scores_row(r, p)) continue;  // scored before a re-admission
      if (!have_logits) {
        finish(self, id, "error", "the tail returned no logits to score the prompt");
        break;
      }
      r.prompt_lps.push_back(logprobs_of(s->logits.data() + size_t(row) * V, c.vocab_size,
                                         r.req.prompt[size_t(p + 1)], r.req.prompt_logprobs));
    }
    if (!st.reqs.count(id)) continue;
    if (r.req.prompt_logprobs >= 0 && !r.prompt_scored && r.prompt_lps.size() + 1 == r.req.prompt.size()) {
      r.prompt_scored = true;
      self->send(r.client, promptlp_atom::value, id, std::exchange(r.prompt_lps, {}));
    }
    if (!sampled) continue;  // a prefill chunk: nothing to sample yet
    const int si = mine.back().first;
    if (r.req.max_new_tokens == 0) {  // the prompt was all it asked for
      finish(self, id, "length");
      continue;
    }
    int tok = s->sampled[size_t(si)];
    r.rng = s->rng[size_t(si)];
    if ((!r.req.ignore_eos && (tok == c.bos_id || tok == c.eos_id)) ||
        std::find(r.req.stop_token_ids.begin(), r.req.stop_token_ids.end(), tok) != r.req.stop_token_ids.end()) {
      finish(self, id, "stop");
      continue;
    }
    auto now = clock::now();
    if (r.generated == 0) {
      r.first_token = now;
      double ttft = std::chrono::duration<double>(r.first_token - r.admitted).count();
      st.ttft_ema = st.ttft_ema == 0 ? ttft : 0.8 * st.ttft_ema + 0.2 * ttft;
    } else {
      double tbt = std::chrono::duration<double>(now - r.last_token).count();
      st.tbt_ema = st.tbt_ema == 0 ? tbt : 0.95 * st.tbt_ema + 0.05 * tbt;
    }
    r.last_token = now;
    ++r.generated;
    ++st.tokens;
    r.tokens.push_back(tok);
    ++r.out_counts[tok];
    if (r.req.repetition_penalty != 1.0f) r.seen.insert(tok);
    if (r.req.logprobs >= 0 && have_logits)
      self->send(r.client, token_atom::value, id, int32_t(tok),
                 logprobs_of(s->logits.data() + size_t(si) * V, c.vocab_size, tok, r.req.logprobs));
    else
      self->send(r.client, token_atom::value, id, int32_t(tok));
    if (r.generated >= r.req.max_new_tokens || int(r.tokens.size()) >= c.seq_len) finish(self, id, "length");
  }
  for (auto id : members) {
    auto rit = st.reqs.find(id);
    if (rit != st.reqs.end() && rit->second.migrate_to && !rit->second.in_step)
      migrate(self, rit->second, rit->second.migrate_to);
  }
  schedule(self);
}

bool route_has(const route_ptr& r, const caf::actor_addr& a) {
  for (auto& h : r->hops)
    if (h.actor.address() == a) return true;
  return false;
}

std::string stage_name(router_actor* self, const caf::actor_addr& a) {
  auto name = [&](const route_ptr& r) -> std::string {
    for (auto& h : r->hops)
      if (h.actor.address() == a)
        return h.range.size() > 0 ? "layer shard [" + std::to_string(h.range.begin) + "," + std::to_string(h.range.end) +
                                        ") of instance " + std::to_string(h.instance)
               : h.range.begin == 0 ? "head stage of instance " + std::to_string(h.instance)
                                    : "tail stage of instance " + std::to_string(h.instance);
    return {};
  };
  for (auto& r : self->state.routes)
    if (auto n = name(r); !n.empty()) return n;
  for (auto& [_, q] : self->state.reqs)
    if (q.path)
      if (auto n = name(q.path); !n.empty()) return n;
  return "a stage";
}

// A stage died or hung: no route goes through it any more, and the requests that were on routes
// through it are re-admitted on the others (or fail with the reason when none can exist).
void stage_lost(router_actor* self, const caf::actor_addr& a, const std::string& reason) {
  auto& st = self->state;
  if (!st.lost.insert(a).second) return;
  std::string why = stage_name(self, a) + " is down (" + reason + ")";
  std::erase_if(st.routes, [&](const route_ptr& r) { return route_has(r, a); });
  std::erase_if(st.inflight, [&](auto& kv) { return route_has(kv.second.path, a); });
  std::vector<uint64_t> hit;
  for (auto& [id, r] : st.reqs)
    if (r.path && !r.moving && route_has(r.path, a)) hit.push_back(id);
  std::vector<uint64_t> waiting(st.waiting.begin(), st.waiting.end());
  apply(self, st.readmit.on_loss(hit, waiting, !st.routes.empty(), why));
  if (st.routes.empty() && !st.readmit.in_grace()) st.down = why;
  schedule(self);
}

caf::behavior router_fun(router_actor* self, model_ptr m, std::vector<route_ptr> routes, router_options opt) {
  auto& st = self->state;
  st.m = m;
  st.routes = routes;
  st.opt = opt;
  st.readmit = readmission(opt.readmit);
  if (auto sch = find_route_scheduler(opt.scheduler))
    st.pick = sch->pick;
  else  // nothing can be scheduled, whatever routes arrive: every request is refused with the reason
    st.misconfigured = "route scheduler: " + sch.message();
  for (auto& r : routes) watch(self, r);  // none yet: requests wait until routes arrive
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.monitored.erase(dm.source)) {
      stage_lost(self, dm.source, to_string(dm.reason));
      return;
    }
    // A client died: cancel its requests (no one is left to receive their tokens).
    auto c = st.clients.find(dm.source);
    if (c == st.clients.end()) return;
    st.clients.erase(c);
    std::vector<uint64_t> ids;
    for (auto& [id, r] : st.reqs)
      if (r.client.address() == dm.source) ids.push_back(id);
    for (auto id : ids) {
      auto& r = st.reqs[id];
      r.client = nullptr;
      if (r.in_step || r.moving)
        r.cancelled = true;
      else
        finish(self, id, "cancelled");
    }
  });
  return {
      [=](generate_atom, generate_request& req) -> caf::result<uint64_t> {
        auto& st = self->state;
        const auto& c = st.m->config;
        if (!st.misconfigured.empty()) return make_caf_error(errc::bad_request, st.misconfigured);
        if (!st.down.empty()) return make_caf_error(errc::unavailable, st.down);
        if (req.prompt.empty()) return make_caf_error(errc::bad_request, "empty prompt (start it with BOS)");
        if (req.logprobs > 20) return make_caf_error(errc::bad_request, "at most 20 top logprobs per token");
        if (int(req.prompt.size()) >= c.seq_len)
          return make_caf_error(errc::bad_request, "prompt of " + std::to_string(req.prompt.size()) +
                                                   " tokens leaves no room in the context of " +
                                                   std::to_string(c.seq_len));
        for (auto t : req.prompt)
          if (t < 0 || t >= c.vocab_size)
            return make_caf_error(errc::bad_request, "token id " + std::to_string(t) + " outside the vocabulary of " +
                                                     std::to_string(c.vocab_size));
        if (req.prompt_logprobs > 20) return make_caf_error(errc::bad_request, "at most 20 top logprobs per prompt token");
        if (req.max_new_tokens < 0) return make_caf_error(errc::bad_request, "max_new_tokens must not be negative");
        if (!(req.temperature >= 0.0f) || req.temperature > 100.0f)
          return make_caf_error(errc::bad_request, "temperature must be in [0, 100]");
        if (!(req.top_p > 0.0f && req.top_p <= 1.0f)) return make_caf_error(errc::bad_request, "top_p must be in (0, 1]");
        if (int(st.waiting.size()) >= st.opt.max_waiting)
          return make_caf_error(errc::overloaded, "queue full (" + std::to_string(st.waiting.size()) + " waiting)");
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (!client) return make_caf_error(errc::bad_request, "anonymous sender: no one to stream tokens to");
        uint64_t id = st.next_id++;
        auto& r = st.reqs[id];
        r.id = id;
        r.client = client;
        r.tokens = req.prompt;
        if (req.repetition_penalty != 1.0f) r.seen.insert(req.prompt.begin(), req.prompt.end());
        r.req = std::move(req);
        r.rng = initial_rng_state(r.req.seed);
        r.admitted = clock::now();
        if (st.clients[client.address()]++ == 0) self->monitor(client);
        st.waiting.push_back(id);
        // Reply before scheduling so the id reaches the client ahead of its first token.
        self->send(self, tick_atom::value);
        for (auto& w : st.wake)
          if (auto a = caf::actor_cast<caf::actor>(w)) self->send(a, wake_atom::value);
        st.wake.clear();
        return id;
      },
      [=](wake_atom) {
        if (auto& w = self->current_sender()) self->state.wake.insert(caf::actor_cast<caf::actor_addr>(w));
      },
      [=](tick_atom) { schedule(self); },
      [=](stagelost_atom, const std::vector<caf::actor>& stages, const std::string& why) {
        for (auto& a : stages)
          if (a) stage_lost(self, a.address(), why);
      },
      [=](closed_atom, const std::string& why) {
        auto& st = self->state;
        st.down = why;
        std::vector<uint64_t> waiting(st.waiting.begin(), st.waiting.end());
        apply(self, st.readmit.close(waiting, why));
        schedule(self);
      },
      [=](grace_atom, uint64_t epoch) {
        auto& st = self->state;
        std::vector<uint64_t> waiting(st.waiting.begin(), st.waiting.end());
        auto a = st.readmit.grace_expired(epoch, waiting);
        if (a.fail.empty()) return;
        if (st.routes.empty()) st.down = a.fail.front().second;
        apply(self, a);
      },
      [=](step_atom, step_ptr& s) { on_step(self, s); },
      [=](step_atom, wire_step& w) {
        if (auto s = from_wire(self, w, m->config.dim, true)) on_step(self, s);
      },
      [=](routes_atom, std::vector<route_ptr>& routes) {
        // New requests start on these routes; running ones finish where they are (drain).
        auto& st = self->state;
        std::erase_if(routes, [&](const route_ptr& r) { return touches_lost(self, r); });
        for (auto& r : routes) watch(self, r);
        st.routes = std::move(routes);
        st.readmit.on_routes(st.routes.size());
        if (!st.routes.empty()) st.down.clear();
        plan_migrations(self);
        schedule(self);
      },
      [=](stats_atom) {
        auto& st = self->state;
        router_stats s;
        s.waiting = uint32_t(st.waiting.size());
        s.running = uint32_t(st.running.size());
        s.routes = uint32_t(st.routes.size());
        s.ttft_ema_s = st.ttft_ema;
        s.tbt_ema_s = st.tbt_ema;
        std::set<uint32_t> instances;
        for (auto& r : st.routes) instances.insert(r->instance);
        s.kv_capacity = uint64_t(instances.size()) * uint64_t(st.opt.max_running) * uint64_t(st.m->config.seq_len);
        s.tokens = st.tokens;
        s.finished = st.finished;
        s.migrations = st.migrations;
        s.kv_migrations = st.kv_migrations;
        s.kv_bytes_moved = st.kv_bytes_moved;
        s.readmissions = st.readmit.readmitted();
        for (auto id : st.running) {
          auto& path = st.reqs[id].path;
          s.kv_tokens += uint64_t(st.reqs[id].processed);
          s.running_by_instance[path->instance]++;
          std::set<uint32_t> touched;
          for (auto& h : path->hops) touched.insert(h.instance);
          for (auto i : touched) s.in_use_by_instance[i]++;
        }
        return s;
      },
      [=](timeout_atom, uint64_t step) {
        auto& st = self->state;
        auto it = st.inflight.find(step);
        if (it == st.inflight.end()) return;
        auto members = std::move(it->second.members);
        st.inflight.erase(it);
        std::erase_if(members, [&](uint64_t id) { return !st.reqs.count(id); });
        // The late return (if any) frees what the step wrote: it names this attempt's sequences.
        for (auto id : members) st.reqs[id].started = false;
        apply(self, st.readmit.on_timeout(members, "step " + std::to_string(step) + " timed out after " +
                                                       std::to_string(st.opt.step_timeout.count()) + " ms"));
        schedule(self);
      },
      [=](cancel_atom, uint64_t id) -> bool {
        auto& st = self->state;
        auto it = st.reqs.find(id);
        if (it == st.reqs.end()) return false;
        if (it->second.in_step || it->second.moving)
          it->second.cancelled = true;  // finished when its step returns or its move ends
        else
          finish(self, id, "cancelled");
        return true;
      },
  };
}

}  // namespace

caf::actor spawn_router(caf::actor_system& sys, model_ptr m, route_ptr path, router_options opt) {
  return spawn_router(sys, std::move(m), std::vector<route_ptr>{std::move(path)}, opt);
}

caf::actor spawn_router(caf::actor_system& sys, model_ptr m, std::vector<route_ptr> routes, router_options opt) {
  return sys.spawn(router_fun, std::move(m), std::move(routes), opt);
}

}  // namespace strata
