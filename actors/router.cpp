#include "actors/router.hpp"

#include <map>
#include <optional>
#include <set>

namespace strata {

namespace {

struct client_entry {
  caf::actor actor;
  int live = 0;  // requests not yet done
};

struct router_state {
  model_ptr m;
  std::optional<batcher> b;
  // The batcher's numbers for routes, stages and clients.
  std::map<route_id, route_ptr> routes;
  std::map<const route*, route_id> route_ids;  // of the routes held above (no reuse of a pointer)
  std::map<caf::actor_addr, stage_id> stage_ids;
  std::map<stage_id, caf::actor> stages;
  std::set<caf::actor_addr> monitored;  // stages not yet known lost
  std::map<caf::actor_addr, uint64_t> client_ids;
  std::map<uint64_t, client_entry> clients;
  std::set<caf::actor_addr> wake;  // told (once) when the next request is admitted
  uint64_t next_route = 1, next_stage = 1, next_client = 1;
  static inline const char* name = "strata.router";
};

using router_actor = caf::stateful_actor<router_state>;

stage_id stage_of(router_actor* self, const caf::actor& a) {
  auto& st = self->state;
  auto [it, fresh] = st.stage_ids.emplace(a.address(), st.next_stage);
  if (fresh) {
    st.stages[st.next_stage++] = a;
    st.monitored.insert(a.address());
    self->monitor(a);
  }
  return it->second;
}

route_id route_of(router_actor* self, const route_ptr& r) {
  auto& st = self->state;
  if (auto it = st.route_ids.find(r.get()); it != st.route_ids.end()) return it->second;
  auto id = st.next_route++;
  st.routes[id] = r;
  st.route_ids[r.get()] = id;
  return id;
}

route_info info_of(router_actor* self, const route_ptr& r) {
  route_info i{route_of(self, r), {}, r->instance, r->share};
  for (auto& h : r->hops) i.stops.push_back({stage_of(self, h.actor), h.range, h.instance});
  return i;
}

// Forgets the routes the batcher no longer names (their actors stay known: ids are not reused).
void prune(router_actor* self) {
  auto& st = self->state;
  for (auto it = st.routes.begin(); it != st.routes.end();) {
    if (st.b->uses_route(it->first)) {
      ++it;
      continue;
    }
    st.route_ids.erase(it->second.get());
    it = st.routes.erase(it);
  }
}

void flush(router_actor* self);

// Runs the parts of a KV move and reports the whole move to the batcher once all parts ended.
void run_kv_move(router_actor* self, act::kv_move& mv) {
  auto left = std::make_shared<size_t>(mv.parts.size());
  auto bytes = std::make_shared<uint64_t>(0);
  auto failure = std::make_shared<std::string>();
  auto done = [=, id = mv.id] {
    if (--*left > 0) return;
    self->state.b->on_kv_moved(id, *bytes, *failure);
    flush(self);
  };
  for (auto& p : mv.parts)
    self->request(self->state.stages[p.from], kv_move_timeout + std::chrono::seconds(5), kvsend_atom::value, mv.seq,
                  int32_t(p.layers.begin), int32_t(p.layers.end), self->state.stages[p.to])
        .then(
            [=](uint64_t n) {
              *bytes += n;
              done();
            },
            [=](caf::error& e) {
              if (failure->empty()) *failure = describe(e);
              done();
            });
}

void send_done(router_actor* self, act::done& d) {
  auto& st = self->state;
  auto it = st.clients.find(d.client);
  if (it == st.clients.end()) return;
  self->send(it->second.actor, done_atom::value, d.result);
  if (--it->second.live > 0) return;
  self->demonitor(it->second.actor);
  st.client_ids.erase(it->second.actor.address());
  st.clients.erase(it);
}

// Turns the batcher's actions into messages, in order.
void flush(router_actor* self) {
  auto& st = self->state;
  auto client = [&](uint64_t id) -> caf::actor {
    auto it = st.clients.find(id);
    return it == st.clients.end() ? caf::actor{} : it->second.actor;
  };
  for (auto& a : st.b->take_actions()) {
    if (auto* s = std::get_if<act::step>(&a)) {
      auto b = std::make_shared<step_batch>();
      b->id = s->id;
      b->path = st.routes.at(s->route);
      b->reply_to = caf::actor_cast<caf::actor>(self);
      auto& r = s->rows;
      b->seqs = std::move(r.seqs);
      b->pos = std::move(r.pos);
      b->tokens = std::move(r.tokens);
      b->want = std::move(r.want);
      b->sampling = std::move(r.sampling);
      b->rng = std::move(r.rng);
      b->processing = std::move(r.processing);
      b->return_logits = r.return_logits;
      b->subnets = std::move(r.subnets);
      b->row_subnet = std::move(r.row_subnet);
      self->delayed_send(self, st.b->options().step_timeout, timeout_atom::value, s->id);
      auto head = b->path->hops[0].actor;
      send_step(self, head, std::move(b));
    } else if (auto* r = std::get_if<act::release>(&a)) {
      for (auto s : r->stages) self->send(st.stages.at(s), release_atom::value, r->seqs);
    } else if (auto* t = std::get_if<act::token>(&a)) {
      if (auto c = client(t->client); c && t->logprobs)
        self->send(c, token_atom::value, t->request, t->token, std::move(*t->logprobs));
      else if (c)
        self->send(c, token_atom::value, t->request, t->token);
    } else if (auto* p = std::get_if<act::prompt_logprobs>(&a)) {
      if (auto c = client(p->client)) self->send(c, promptlp_atom::value, p->request, std::move(p->entries));
    } else if (auto* d = std::get_if<act::done>(&a)) {
      send_done(self, *d);
    } else if (auto* k = std::get_if<act::kv_move>(&a)) {
      run_kv_move(self, *k);
    } else if (auto* g = std::get_if<act::grace>(&a)) {
      self->delayed_send(self, std::chrono::milliseconds(g->ms), grace_atom::value, g->epoch);
    } else if (auto* d = std::get_if<act::deadline>(&a)) {
      self->delayed_send(self, std::chrono::milliseconds(d->ms), qdeadline_atom::value, d->request);
    }
  }
}

void on_step(router_actor* self, step_ptr& s) {
  step_return r{std::move(s->seqs), std::move(s->pos),    std::move(s->want), std::move(s->sampled),
                std::move(s->rng),  std::move(s->logits), std::move(s->error)};
  self->state.b->on_step(s->id, r);
  flush(self);
}

void stage_lost(router_actor* self, const caf::actor& a, const std::string& why) {
  auto id = stage_of(self, a);
  self->state.monitored.erase(a.address());
  self->state.b->on_stage_lost(id, why);
  flush(self);
  prune(self);
}

caf::behavior router_fun(router_actor* self, model_ptr m, std::vector<route_ptr> routes, router_options opt) {
  auto& st = self->state;
  st.m = m;
  st.b.emplace(m->config, opt);
  std::vector<route_info> infos;
  for (auto& r : routes) infos.push_back(info_of(self, r));
  st.b->set_routes(std::move(infos));  // none yet: requests wait until routes arrive
  flush(self);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.monitored.count(dm.source)) {
      stage_lost(self, st.stages.at(st.stage_ids.at(dm.source)), to_string(dm.reason));
      return;
    }
    // A client died: cancel its requests (no one is left to receive their tokens).
    auto c = st.client_ids.find(dm.source);
    if (c == st.client_ids.end()) return;
    auto id = c->second;
    st.client_ids.erase(c);
    st.clients.erase(id);
    st.b->cancel_client(id);
    flush(self);
  });
  return {
      [=](generate_atom, generate_request& req) -> caf::result<uint64_t> {
        auto& st = self->state;
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (!client) return make_caf_error(errc::bad_request, "anonymous sender: no one to stream tokens to");
        auto [cit, fresh] = st.client_ids.emplace(client.address(), st.next_client);
        auto id = st.b->admit(std::move(req), cit->second);
        if (!id) {
          if (fresh) st.client_ids.erase(cit);
          return to_caf(id.err());
        }
        if (fresh) {
          st.clients[st.next_client++] = client_entry{client, 0};
          self->monitor(client);
        }
        st.clients[cit->second].live++;
        // Reply before scheduling so the id reaches the client ahead of its first token.
        self->send(self, tick_atom::value);
        for (auto& w : st.wake)
          if (auto a = caf::actor_cast<caf::actor>(w)) self->send(a, wake_atom::value);
        st.wake.clear();
        return *id;
      },
      [=](wake_atom) {
        if (auto& w = self->current_sender()) self->state.wake.insert(caf::actor_cast<caf::actor_addr>(w));
      },
      [=](tick_atom) {
        self->state.b->schedule();
        flush(self);
      },
      [=](stagelost_atom, const std::vector<caf::actor>& stages, const std::string& why) {
        for (auto& a : stages)
          if (a) stage_lost(self, a, why);
      },
      [=](closed_atom, const std::string& why) {
        self->state.b->close(why);
        flush(self);
      },
      [=](grace_atom, uint64_t epoch) {
        self->state.b->on_grace(epoch);
        flush(self);
      },
      [=](qdeadline_atom, uint64_t request) {
        self->state.b->on_queue_deadline(request);
        flush(self);
      },
      [=](step_atom, step_ptr& s) { on_step(self, s); },
      [=](step_atom, wire_step& w) {
        if (auto s = from_wire(self, w, m->config.dim, true)) on_step(self, s);
      },
      [=](routes_atom, std::vector<route_ptr>& routes) {
        std::vector<route_info> infos;
        for (auto& r : routes) infos.push_back(info_of(self, r));
        self->state.b->set_routes(std::move(infos));
        flush(self);
        prune(self);
      },
      [=](stats_atom) { return self->state.b->stats(); },
      [=](timeout_atom, uint64_t step) {
        self->state.b->on_step_timeout(step);
        flush(self);
      },
      [=](cancel_atom, uint64_t id) -> bool {
        bool known = self->state.b->cancel(id);
        flush(self);
        return known;
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
