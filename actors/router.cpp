#include "actors/router.hpp"

#include <deque>
#include <map>
#include <set>

namespace strata {

namespace {

using clock = std::chrono::steady_clock;

struct request_state {
  uint64_t id = 0;
  caf::actor client;
  generate_request req;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int processed = 0;            // positions already in the KV cache
  int generated = 0;
  uint64_t rng = 0;
  bool in_step = false;
  bool cancelled = false;
  bool started = false;  // has (or may have) KV state in the shards
  clock::time_point admitted;
  clock::time_point first_token;
};

struct router_state {
  model_ptr m;
  route_ptr path;
  router_options opt;
  std::map<uint64_t, request_state> reqs;
  std::deque<uint64_t> waiting;
  std::set<uint64_t> running;
  std::map<uint64_t, std::vector<uint64_t>> inflight;  // step id -> request ids
  std::map<caf::actor_addr, int> clients;              // monitored clients -> live requests
  uint64_t next_id = 1;
  uint64_t next_step = 1;
  std::string down;  // set when a stage died: the graph no longer serves
  static inline const char* name = "strata.router";
};

using router_actor = caf::stateful_actor<router_state>;

int64_t micros(clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

void release_kv(router_actor* self, const std::vector<seq_id>& seqs) {
  if (seqs.empty()) return;
  for (size_t i = 1; i + 1 < self->state.path->hops.size(); ++i)
    self->send(self->state.path->hops[i].actor, release_atom::value, seqs);
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
  // A request inside a step is released when the step returns (see on_step), never before,
  // so a release cannot overtake the step's writes to the cache.
  if (r.started && !r.in_step) release_kv(self, {id});
  st.running.erase(id);
  std::erase(st.waiting, id);
  st.reqs.erase(it);
}

void fail_all(router_actor* self, errc code, const std::string& why) {
  std::vector<uint64_t> ids;
  for (auto& [id, _] : self->state.reqs) ids.push_back(id);
  for (auto id : ids) finish(self, id, code == errc::cancelled ? "cancelled" : "error", why);
}

void schedule(router_actor* self) {
  auto& st = self->state;
  if (!st.down.empty()) return;
  while (int(st.inflight.size()) < st.opt.max_inflight) {
    while (!st.waiting.empty() && int(st.running.size()) < st.opt.max_running) {
      st.running.insert(st.waiting.front());
      st.waiting.pop_front();
    }
    auto s = std::make_shared<step_batch>();
    s->id = st.next_step++;
    s->path = st.path;
    s->reply_to = caf::actor_cast<caf::actor>(self);
    std::vector<uint64_t> members;
    int budget = st.opt.max_batch_tokens;
    for (auto id : st.running) {
      if (budget <= 0) break;
      auto& r = st.reqs[id];
      if (r.in_step || r.cancelled) continue;
      int todo = int(r.tokens.size()) - r.processed;
      int take = std::min(todo, budget);
      for (int i = 0; i < take; ++i) {
        s->seqs.push_back(id);
        s->pos.push_back(r.processed + i);
        s->tokens.push_back(r.tokens[size_t(r.processed + i)]);
        bool last = r.processed + i + 1 == int(r.tokens.size());
        s->want.push_back(last ? 1 : 0);
      }
      if (r.processed + take == int(r.tokens.size())) {
        s->sampling.push_back({r.req.temperature, r.req.top_p, r.req.seed});
        s->rng.push_back(r.rng);
      }
      budget -= take;
      r.in_step = true;
      r.started = true;
      members.push_back(id);
    }
    if (members.empty()) return;
    st.inflight.emplace(s->id, std::move(members));
    self->delayed_send(self, st.opt.step_timeout, timeout_atom::value, s->id);
    self->send(st.path->hops[0].actor, step_atom::value, std::move(s));
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
    release_kv(self, seqs);
    return;
  }
  auto members = std::move(it->second);
  st.inflight.erase(it);
  // Rows per request and the index of each request's sampled token.
  std::map<uint64_t, int> rows;
  std::map<uint64_t, int> sample_idx;
  int w = 0;
  for (int r = 0; r < s->rows(); ++r) {
    ++rows[s->seqs[size_t(r)]];
    if (s->want[size_t(r)]) sample_idx[s->seqs[size_t(r)]] = w++;
  }
  for (auto id : members) {
    auto rit = st.reqs.find(id);
    if (rit == st.reqs.end()) continue;
    auto& r = rit->second;
    r.in_step = false;
    if (!s->error.empty()) {
      finish(self, id, "error", s->error);
      continue;
    }
    r.processed += rows[id];
    if (r.cancelled) {
      finish(self, id, "cancelled");
      continue;
    }
    auto si = sample_idx.find(id);
    if (si == sample_idx.end()) continue;  // a prefill chunk: nothing to sample yet
    int tok = s->sampled[size_t(si->second)];
    r.rng = s->rng[size_t(si->second)];
    const auto& c = st.m->config;
    if (!r.req.ignore_eos && (tok == c.bos_id || tok == c.eos_id)) {
      finish(self, id, "stop");
      continue;
    }
    if (r.generated == 0) r.first_token = clock::now();
    ++r.generated;
    r.tokens.push_back(tok);
    self->send(r.client, token_atom::value, id, int32_t(tok));
    if (r.generated >= r.req.max_new_tokens || int(r.tokens.size()) >= c.seq_len) finish(self, id, "length");
  }
  schedule(self);
}

caf::behavior router_fun(router_actor* self, model_ptr m, route_ptr path, router_options opt) {
  auto& st = self->state;
  st.m = m;
  st.path = path;
  st.opt = opt;
  for (auto& h : path->hops) self->monitor(h.actor);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    for (auto& h : st.path->hops)
      if (h.actor.address() == dm.source) {
        std::string what = h.range.size() > 0 ? "layer shard [" + std::to_string(h.range.begin) + "," +
                                                   std::to_string(h.range.end) + ")"
                           : h.range.begin == 0 ? "head stage"
                                                : "tail stage";
        st.down = what + " is down (" + to_string(dm.reason) + ")";
        st.inflight.clear();
        fail_all(self, errc::unavailable, st.down);
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
      if (r.in_step)
        r.cancelled = true;
      else
        finish(self, id, "cancelled");
    }
  });
  return {
      [=](generate_atom, generate_request& req) -> caf::result<uint64_t> {
        auto& st = self->state;
        const auto& c = st.m->config;
        if (!st.down.empty()) return make_error(errc::unavailable, st.down);
        if (req.prompt.empty()) return make_error(errc::bad_request, "empty prompt (start it with BOS)");
        if (int(req.prompt.size()) >= c.seq_len)
          return make_error(errc::bad_request, "prompt of " + std::to_string(req.prompt.size()) +
                                                   " tokens leaves no room in the context of " +
                                                   std::to_string(c.seq_len));
        for (auto t : req.prompt)
          if (t < 0 || t >= c.vocab_size)
            return make_error(errc::bad_request, "token id " + std::to_string(t) + " outside the vocabulary of " +
                                                     std::to_string(c.vocab_size));
        if (req.max_new_tokens < 1) return make_error(errc::bad_request, "max_new_tokens must be at least 1");
        if (!(req.temperature >= 0.0f) || req.temperature > 100.0f)
          return make_error(errc::bad_request, "temperature must be in [0, 100]");
        if (!(req.top_p > 0.0f && req.top_p <= 1.0f)) return make_error(errc::bad_request, "top_p must be in (0, 1]");
        if (int(st.waiting.size()) >= st.opt.max_waiting)
          return make_error(errc::overloaded, "queue full (" + std::to_string(st.waiting.size()) + " waiting)");
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (!client) return make_error(errc::bad_request, "anonymous sender: no one to stream tokens to");
        uint64_t id = st.next_id++;
        auto& r = st.reqs[id];
        r.id = id;
        r.client = client;
        r.tokens = req.prompt;
        r.req = std::move(req);
        r.rng = initial_rng_state(r.req.seed);
        r.admitted = clock::now();
        if (st.clients[client.address()]++ == 0) self->monitor(client);
        st.waiting.push_back(id);
        // Reply before scheduling so the id reaches the client ahead of its first token.
        self->send(self, tick_atom::value);
        return id;
      },
      [=](tick_atom) { schedule(self); },
      [=](step_atom, step_ptr& s) { on_step(self, s); },
      [=](timeout_atom, uint64_t step) {
        auto& st = self->state;
        auto it = st.inflight.find(step);
        if (it == st.inflight.end()) return;
        auto members = std::move(it->second);
        st.inflight.erase(it);
        for (auto id : members) {
          auto rit = st.reqs.find(id);
          if (rit == st.reqs.end()) continue;
          rit->second.in_step = false;
          rit->second.started = false;  // the late step's return releases the cache (on_step)
          finish(self, id, "error",
                 "step " + std::to_string(step) + " timed out after " + std::to_string(st.opt.step_timeout.count()) +
                     " ms");
        }
        schedule(self);
      },
      [=](cancel_atom, uint64_t id) -> bool {
        auto& st = self->state;
        auto it = st.reqs.find(id);
        if (it == st.reqs.end()) return false;
        if (it->second.in_step)
          it->second.cancelled = true;  // finished when its step returns
        else
          finish(self, id, "cancelled");
        return true;
      },
  };
}

}  // namespace

caf::actor spawn_router(caf::actor_system& sys, model_ptr m, route_ptr path, router_options opt) {
  return sys.spawn(router_fun, std::move(m), std::move(path), opt);
}

}  // namespace strata
