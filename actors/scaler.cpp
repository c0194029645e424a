#include "actors/scaler.hpp"

#include <functional>
#include <set>

#include "actors/cluster.hpp"
#include "actors/instance_provider.hpp"
#include "dataflow/model/param_image.hpp"

namespace strata {

namespace {

using clk = std::chrono::steady_clock;
using cping_atom = caf::atom_constant<caf::atom("cping")>;  // does the controller still answer?

struct instance {
  uint32_t id = 0;
  std::string node;  // cluster mode: the node process hosting it
  caf::actor head, shard, tail;
  instance_view view;
  double decided = 0;       // scale-out decision time
  double first_route = -1;  // first time requests could be routed to it
  double full_at = -1;
  double idle_since = -1;
  bool draining = false;
  double share = 1.0;  // compute share of its device, as its shard last confirmed
  bool resizable = true;  // false once its shard refused a share: a whole device from then on
};

struct scaler_state {
  model_ptr m;
  caf::actor router;
  std::shared_ptr<scaling_policy> policy;
  scaling_knobs knobs;
  scaler_options opt;
  std::map<uint32_t, instance> insts;
  uint32_t next = 1;
  clk::time_point t0;
  scaling_report report;
  std::shared_ptr<instance_provider> provider;  // where instances run (actors/instance_provider.hpp)
  uint64_t last_tokens = 0;
  double last_tick = 0;
  uint64_t tick_epoch = 0;  // one chain of ticks: a wake-up starts a new one, older ticks lapse
  double shares = 0;  // sum of the started instances' shares since the last count
  std::string controller_lost;       // set once the cluster's controller is gone: nothing can be placed
  std::string no_node;               // why the last placement fell short (empty: it did not)
  static inline const char* name = "strata.scaler";
};

using scaler_actor = caf::stateful_actor<scaler_state>;

double now(scaler_actor* self) { return std::chrono::duration<double>(clk::now() - self->state.t0).count(); }

void event(scaler_actor* self, const std::string& what, uint32_t id, const std::string& detail = {}) {
  auto& st = self->state;
  st.report.events.push_back({now(self), what, id, detail});
  ++st.report.event_counts[what];
  if (st.opt.max_events && st.report.events.size() >= 2 * st.opt.max_events)  // trimmed now and then, not per event
    st.report.events.erase(st.report.events.begin(), st.report.events.end() - ptrdiff_t(st.opt.max_events));
  if (!st.opt.log_label.empty())
    std::fprintf(stderr, "strata scaler %s: %.2f s %s%s%s%s\n", st.opt.log_label.c_str(), now(self), what.c_str(),
                 id ? (" #" + std::to_string(id)).c_str() : "", detail.empty() ? "" : ": ", detail.c_str());
}

void count_instances(scaler_actor* self) {
  auto& st = self->state;
  auto& r = st.report;
  double t = now(self), n = double(st.insts.size());
  if (!r.instances.empty()) {
    r.instance_seconds += r.instances.back().second * (t - r.instances.back().first);
    r.device_seconds += st.shares * (t - r.instances.back().first);
  }
  r.instances.push_back({t, n});
  if (st.opt.max_events && r.instances.size() >= 2 * st.opt.max_events)  // its sums above keep the history
    r.instances.erase(r.instances.begin(), r.instances.end() - ptrdiff_t(st.opt.max_events));
  st.shares = 0;
  for (auto& [id, in] : st.insts) st.shares += in.share;
}

// Vertical scaling: asks an instance's shard for a compute share. Until it answers the instance
// keeps its old share; a shard that cannot resize (a plain CPU shard) counts as a whole device
// and is left out of the shares the policy sees, so a vertical policy scales it horizontally.
void resize_instance(scaler_actor* self, uint32_t id, double share) {
  auto it = self->state.insts.find(id);
  if (it == self->state.insts.end() || !it->second.shard) return;
  self->request(it->second.shard, std::chrono::seconds(5), resize_atom::value, share)
      .then(
          [=](double got) {
            auto it = self->state.insts.find(id);
            if (it == self->state.insts.end()) return;
            char detail[64];
            std::snprintf(detail, sizeof detail, "share %.2f -> %.2f", it->second.share, got);
            it->second.share = got;
            event(self, "resize", id, detail);
            count_instances(self);
          },
          [=](caf::error& e) {
            auto it = self->state.insts.find(id);
            if (it == self->state.insts.end()) return;
            event(self, "resize failed", id, describe(e) + "; counted as a whole device");
            it->second.share = 1.0;
            it->second.resizable = false;
            count_instances(self);
          });
}

route_ptr make_route(scaler_actor* self, const route_plan& p) {
  auto& st = self->state;
  int L = st.m->config.n_layers;
  auto r = std::make_shared<route>();
  r->instance = p.head;
  if (st.opt.proportional_share) r->share = double(st.insts[p.head].view.layers()) / double(L);
  r->hops.push_back({st.insts[p.head].head, {0, 0}, p.head});
  for (auto& s : p.stops) r->hops.push_back({st.insts[s.instance].shard, {s.begin, s.end}, s.instance});
  r->hops.push_back({st.insts[p.tail].tail, {L, L}, p.tail});
  return r;
}

void push_routes(scaler_actor* self) {
  auto& st = self->state;
  int L = st.m->config.n_layers;
  auto spec = st.policy->loading();
  std::vector<instance_view> views;
  for (auto& [id, in] : st.insts) {
    auto v = in.view;
    v.draining = in.draining;
    views.push_back(v);
  }
  std::vector<route_ptr> routes;
  for (auto& [id, in] : st.insts) {
    if (in.draining) continue;
    bool serve = in.view.full() || (spec.live && in.view.globals && in.view.layers() > 0);
    if (!serve) continue;
    std::vector<uint32_t> partners{0};  // 0: plan_route's own pick
    if (st.opt.split_candidates && !in.view.full())
      for (auto& v : views)
        if (v.full() && !v.draining) partners.push_back(v.id);
    std::set<std::string> seen;
    for (auto partner : partners) {
      auto plan = plan_route(id, views, L, spec.pipeline, partner);
      if (!plan) break;  // some layer is nowhere yet
      auto text = to_string(*plan);
      if (!seen.insert(text).second) continue;
      auto r = make_route(self, *plan);
      if (std::any_of(r->hops.begin(), r->hops.end(), [](const hop& h) { return !h.actor; })) {
        event(self, "skipped", id, "route " + text + " has a stage whose actor is not known yet");
        continue;
      }
      routes.push_back(std::move(r));
      if (in.first_route < 0) {
        in.first_route = now(self);
        if (in.decided > 0 || in.full_at < 0) {
          st.report.to_first_layer_s.push_back(in.first_route - in.decided);
          event(self, "serving", id, text);
        }
      }
    }
  }
  self->send(st.router, routes_atom::value, std::move(routes));
}

void on_layer(scaler_actor* self, uint32_t id, int32_t layer);
void stop_instance(scaler_actor* self, uint32_t id);

// Starts `n` instances where the provider finds room; `preloaded`: they hold the parameters
// from the start (the initial ones).
void start_instances(scaler_actor* self, bool preloaded, int n) {
  auto& st = self->state;
  if (!st.controller_lost.empty()) return;
  int L = st.m->config.n_layers;
  std::set<std::string> in_use;
  for (auto& [id, in] : st.insts)
    if (!in.node.empty()) in_use.insert(in.node);
  std::string why;
  auto places = st.provider->places(n, in_use, why);
  // Said once per reason: a policy asks again every tick while it cannot place.
  if (int(places.size()) < n && why != st.no_node) event(self, "no node", 0, why);
  st.no_node = int(places.size()) < n ? why : std::string();
  std::vector<placement> group;
  for (auto& where : places) {
    instance in;
    in.id = st.next++;
    in.node = where;
    in.view.id = in.id;
    in.view.have.assign(size_t(L), false);
    in.decided = preloaded ? 0 : now(self);
    group.push_back({in.id, where});
    st.insts[in.id] = std::move(in);
    count_instances(self);
  }
  st.provider->start(group, preloaded);
}

// The provider made an instance's stages: a whole one serves at once, a loading one announces
// its layers as they land (on_layer).
bool on_placed(scaler_actor* self, uint32_t id, const instance_stages& s, bool whole) {
  auto& st = self->state;
  auto it = st.insts.find(id);
  if (it == st.insts.end()) return false;
  auto& in = it->second;
  in.head = s.head;
  in.shard = s.shard;
  in.tail = s.tail;
  if (double share = st.policy->initial_share(); share < 1.0) resize_instance(self, id, share);
  if (whole) {
    in.view.globals = true;
    in.view.have.assign(in.view.have.size(), true);
    in.full_at = now(self);
    event(self, "started", id, (in.node.empty() ? "" : "on " + in.node + ", ") + "whole (its parameters are there)");
    push_routes(self);
  } else {
    event(self, "scale-out", id, (in.node.empty() ? "" : "on " + in.node + ", ") + "loading from " + st.policy->loading().source);
  }
  return true;
}

void stop_instance(scaler_actor* self, uint32_t id) {
  auto& st = self->state;
  auto it = st.insts.find(id);
  if (it == st.insts.end()) return;
  st.provider->stop({id, it->second.node});
  st.insts.erase(it);
  event(self, "stopped", id);
  count_instances(self);
}

// The controller dropped a node (dead or hung): its instances are gone. The router hears of their
// stages at once (a hung node's connection stays up, so no monitor would tell it) and re-admits
// their requests elsewhere; the node gets no new instance.
void drop_instances(scaler_actor* self, const std::function<bool(const instance&)>& gone_if, const std::string& why) {
  auto& st = self->state;
  std::vector<uint32_t> gone;
  std::vector<caf::actor> stages;
  for (auto& [id, in] : st.insts)
    if (gone_if(in)) {
      gone.push_back(id);
      for (const caf::actor& a : {in.head, in.shard, in.tail})
        if (a) stages.push_back(a);
    }
  if (!stages.empty()) self->send(st.router, stagelost_atom::value, stages, why);
  for (auto id : gone) {
    event(self, "lost", id, st.insts[id].node + ": " + why);
    st.insts.erase(id);
  }
  if (!gone.empty()) {
    count_instances(self);
    push_routes(self);
  }
}

// The instances `drain_if` selects take no new request and stop once none of theirs runs
// (on_stats); the policy counts them gone, so it starts replacements as the load asks.
void drain_instances(scaler_actor* self, const std::function<bool(const instance&)>& drain_if,
                     const std::function<std::string(const instance&)>& why) {
  bool changed = false;
  for (auto& [id, in] : self->state.insts)
    if (!in.draining && drain_if(in)) {
      in.draining = changed = true;
      event(self, "drain", id, why(in));
    }
  if (changed) push_routes(self);
}

// Nodes told to leave: their instances drain (replacements go elsewhere).
void drain_nodes(scaler_actor* self, const std::vector<std::string>& nodes) {
  drain_instances(
      self, [&](const instance& in) { return std::find(nodes.begin(), nodes.end(), in.node) != nodes.end(); },
      [](const instance& in) { return "node " + in.node + " leaves the cluster"; });
}

void node_lost(scaler_actor* self, const std::string& node, const std::string& why) {
  self->state.provider->lose(node);
  drop_instances(self, [&](const instance& in) { return in.node == node; }, "node " + node + " lost: " + why);
}

// Without the controller nothing can be placed or loaded: the instances of its own node are gone
// and so are those still loading (their transfers cannot finish). Whole instances elsewhere serve
// on (the driver reaches their nodes directly, control_plane's mesh). With none left the router
// fails what waits at once instead of letting it sit out the grace period.
void controller_lost(scaler_actor* self, const std::string& reason) {
  auto& st = self->state;
  if (!st.controller_lost.empty()) return;
  st.controller_lost = "the cluster's controller was lost (" + reason + "); no instance can start";
  auto controller_node = st.opt.cluster.controller.node();
  drop_instances(self,
                 [&](const instance& in) {
                   return !in.node.empty() && (!in.view.full() || (in.head && in.head.node() == controller_node));
                 },
                 st.controller_lost);
  size_t left = 0;
  for (auto& [id, in] : st.insts) left += in.node.empty() ? 0 : 1;
  event(self, "controller lost", 0,
        reason + "; " + std::to_string(left) + " instance(s) serve on" + (left ? ", no scaling" : ""));
  if (left == 0) self->send(st.router, closed_atom::value, st.controller_lost + " and none runs");
}

// Returns whether the model is idle: nothing waits or runs and no instance loads or drains.
bool on_stats(scaler_actor* self, const router_stats& rs) {
  auto& st = self->state;
  double t = now(self);
  // Stop drained instances: nothing running touches them any more.
  std::vector<uint32_t> draining;
  for (auto& [id, in] : st.insts)
    if (in.draining) draining.push_back(id);
  for (auto id : drained(draining, rs.in_use_by_instance)) stop_instance(self, id);
  load_view v;
  v.now = t;
  v.waiting = rs.waiting;
  v.running = rs.running;
  v.ttft_ema_s = rs.ttft_ema_s;
  v.tbt_ema_s = rs.tbt_ema_s;
  v.quality_ema = rs.quality_ema;
  v.kv_use = rs.kv_capacity > 0 ? double(rs.kv_tokens) / double(rs.kv_capacity) : 0;
  if (t > st.last_tick) v.tokens_per_s = double(rs.tokens - st.last_tokens) / (t - st.last_tick);
  st.last_tokens = rs.tokens;
  st.report.migrations = rs.migrations;
  st.report.kv_migrations = rs.kv_migrations;
  st.report.kv_bytes_moved = rs.kv_bytes_moved;
  st.last_tick = t;
  v.running_by_instance = rs.running_by_instance;
  for (auto& [id, in] : st.insts) {
    if (in.draining) continue;
    if (in.view.full()) {
      ++v.full;
      if (in.resizable) v.share[id] = in.share;
      auto r = rs.running_by_instance.find(id);
      bool idle = r == rs.running_by_instance.end() || r->second == 0;
      if (!idle) in.idle_since = -1;
      else if (in.idle_since < 0) in.idle_since = t;
      if (idle) v.idle_for_s[id] = t - in.idle_since;
    } else {
      ++v.loading;
    }
  }
  auto d = st.policy->decide(v);
  if (d.add > 0) start_instances(self, false, d.add);
  for (auto& [id, share] : d.resize) resize_instance(self, id, share);
  bool changed = d.add > 0;
  for (auto id : d.remove) {
    auto it = st.insts.find(id);
    if (it == st.insts.end() || it->second.draining) continue;
    it->second.draining = true;
    event(self, "drain", id, "idle " + std::to_string(v.idle_for_s[id]) + " s");
    changed = true;
  }
  if (changed) push_routes(self);
  if (changed || rs.waiting > 0 || rs.running > 0 || v.loading > 0) return false;
  for (auto& [id, in] : st.insts)
    if (in.draining) return false;
  return true;
}

void tick(scaler_actor* self, uint64_t epoch) {
  if (epoch != self->state.tick_epoch) return;
  self->request(self->state.router, std::chrono::seconds(2), stats_atom::value)
      .then(
          [=](const router_stats& rs) {
            bool idle = on_stats(self, rs);
            if (epoch != self->state.tick_epoch) return;
            if (idle) self->send(self->state.router, wake_atom::value);
            self->delayed_send(self, idle ? self->state.opt.idle_tick : self->state.opt.tick, scaletick_atom::value, epoch);
          },
          [=](caf::error&) {
            if (epoch == self->state.tick_epoch)
              self->delayed_send(self, self->state.opt.tick, scaletick_atom::value, epoch);
          });
}

void on_layer(scaler_actor* self, uint32_t id, int32_t layer) {
  auto& st = self->state;
  auto it = st.insts.find(id);
  if (it == st.insts.end()) return;
  auto& in = it->second;
  bool fresh = layer < 0 ? !in.view.globals : size_t(layer) < in.view.have.size() && !in.view.have[size_t(layer)];
  if (layer < 0)
    in.view.globals = true;
  else if (size_t(layer) < in.view.have.size())
    in.view.have[size_t(layer)] = true;
  if (fresh) {
    ++st.report.layers_loaded;
    st.report.bytes_loaded += st.provider->segment_bytes(layer);
    if (!in.node.empty()) {
      auto& nl = st.report.by_node[in.node];
      ++nl.layers_loaded;
      nl.bytes_loaded += st.provider->segment_bytes(layer);
    }
  }
  if (in.view.full() && in.full_at < 0) {
    in.full_at = now(self);
    st.report.to_full_s.push_back(in.full_at - in.decided);
    event(self, "full", id, std::to_string(in.view.have.size()) + " layers local");
  }
  push_routes(self);
}

caf::behavior scaler_fun(scaler_actor* self, model_ptr m, caf::actor router, std::shared_ptr<scaling_policy> policy,
                         scaling_knobs knobs, scaler_options opt) {
  auto& st = self->state;
  st.m = m;
  st.router = router;
  st.policy = policy;
  st.knobs = knobs;
  st.opt = opt;
  st.t0 = clk::now();
  st.report.policy = policy->name();
  provider_reports reports;
  reports.event = [=](uint32_t id, const std::string& what, const std::string& detail) { event(self, what, id, detail); };
  reports.placed = [=](uint32_t id, const instance_stages& s, bool whole) { return on_placed(self, id, s, whole); };
  reports.failed = [=](uint32_t id) { stop_instance(self, id); };
  reports.serving_places = [=] {
    std::vector<std::string> out;
    for (auto& [id, in] : self->state.insts)
      if (in.view.full()) out.push_back(in.node);
    return out;
  };
  st.provider = make_instance_provider(self, m, policy, opt, std::move(reports));
  // Instances die with their scaler, whichever way it ends (nodes monitor the scaler of theirs).
  self->attach_functor([provider = st.provider] { provider->shutdown(); });
  if (opt.cluster.controller) {
    self->send(self, cping_atom::value);
    self->monitor(opt.cluster.controller);
    self->set_down_handler([=](caf::down_msg& dm) {
      if (dm.source == self->state.opt.cluster.controller.address()) controller_lost(self, caf::to_string(dm.reason));
    });
  }
  if (knobs.min_instances > 0) start_instances(self, true, knobs.min_instances);  // 0: from the first request
  push_routes(self);
  self->send(self, scaletick_atom::value, st.tick_epoch);
  return {
      [=](scaletick_atom, uint64_t epoch) { tick(self, epoch); },
      [=](wake_atom) { tick(self, ++self->state.tick_epoch); },
      [=](nodelost_atom, const std::string& node, const std::string& why) { node_lost(self, node, why); },
      [=](cping_atom) {
        // A hung controller (frozen, swapped out) keeps its connection: no monitor fires, and
        // the instance on its node hangs with it. Silence past the timeout is treated as its loss.
        auto& st = self->state;
        if (!st.controller_lost.empty()) return;
        self->request(st.opt.cluster.controller, st.opt.controller_timeout, view_atom::value)
            .then(
                [=](const cluster_view& v) {
                  self->state.provider->on_view(v);
                  self->state.report.view = v;
                  drain_nodes(self, v.draining);
                  self->delayed_send(self, self->state.opt.controller_ping, cping_atom::value);
                },
                [=](caf::error& e) {
                  controller_lost(self, e == caf::sec::request_timeout
                                            ? "no answer within " +
                                                  std::to_string(self->state.opt.controller_timeout.count()) +
                                                  " ms: it hangs"
                                            : describe(e));
                });
      },
      [=](layerin_atom, uint32_t id, int32_t layer, const std::vector<caf::actor>& actors) {
        auto it = self->state.insts.find(id);
        if (it == self->state.insts.end()) return;
        if (layer < 0 && actors.size() == 2) {
          it->second.head = actors[0];
          it->second.tail = actors[1];
        }
        on_layer(self, id, layer);
      },
      [=](evict_atom, const std::string& why) {
        drain_instances(self, [](const instance&) { return true; }, [&](const instance&) { return why; });
        tick(self, ++self->state.tick_epoch);  // stops the drained ones as soon as nothing runs there
      },
      [=](report_atom) {
        auto& st = self->state;
        count_instances(self);
        for (auto& [node, nl] : st.report.by_node) nl.instances = 0;
        for (auto& [id, in] : st.insts)
          if (!in.node.empty()) ++st.report.by_node[in.node].instances;
        return st.report;
      },
  };
}

}  // namespace

caf::actor spawn_scaler(caf::actor_system& sys, model_ptr m, caf::actor router, std::shared_ptr<scaling_policy> policy,
                        scaling_knobs knobs, scaler_options opt) {
  return sys.spawn(scaler_fun, std::move(m), std::move(router), std::move(policy), knobs, opt);
}

}  // namespace strata
