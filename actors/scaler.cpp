#include "actors/scaler.hpp"

#include <functional>
#include <set>

#include "actors/cluster.hpp"
#include "dataflow/model/param_image.hpp"

namespace strata {

namespace {

using clk = std::chrono::steady_clock;
using cping_atom = caf::atom_constant<caf::atom("cping")>;  // does the controller still answer?

struct instance {
  uint32_t id = 0;
  std::string node;  // cluster mode: the node process hosting it
  caf::actor head, shard, tail, loader;
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
  std::shared_ptr<std::vector<caf::actor>> owned = std::make_shared<std::vector<caf::actor>>();
  uint64_t last_tokens = 0;
  double last_tick = 0;
  uint64_t tick_epoch = 0;  // one chain of ticks: a wake-up starts a new one, older ticks lapse
  double shares = 0;  // sum of the started instances' shares since the last count
  std::set<std::string> lost_nodes;  // dropped by the controller: never placed on again
  std::string controller_lost;       // set once the cluster's controller is gone: nothing can be placed
  static inline const char* name = "strata.scaler";
};

using scaler_actor = caf::stateful_actor<scaler_state>;

std::chrono::microseconds us(double seconds) { return std::chrono::microseconds(int64_t(seconds * 1e6)); }

double now(scaler_actor* self) { return std::chrono::duration<double>(clk::now() - self->state.t0).count(); }

void event(scaler_actor* self, const std::string& what, uint32_t id, const std::string& detail = {}) {
  self->state.report.events.push_back({now(self), what, id, detail});
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

// Streams an instance's parameters into its shard: the globals, then layers in `order`, each
// after the time its bytes take on the link; announces each as it lands.
struct loader_state {
  static inline const char* name = "strata.loader";
};
caf::behavior loader_fun(caf::stateful_actor<loader_state>* self, model_ptr m, caf::actor shard, caf::actor scaler,
                         uint32_t id, std::vector<int> order, double globals_s, double layer_s) {
  self->delayed_send(self, us(globals_s), lready_atom::value, int32_t(-1), size_t(0));
  return {
      [=](lready_atom, int32_t layer, size_t next) {
        if (layer >= 0) self->send(shard, load_atom::value, layer, layer_ptr(m->layers[size_t(layer)]));
        self->send(scaler, lready_atom::value, id, layer);
        if (next < order.size())
          self->delayed_send(self, us(layer_s), lready_atom::value, int32_t(order[next]), next + 1);
        else
          self->quit();
      },
  };
}

// Parameter bytes of a layer (-1: the globals) as they travel: the model's own in a cluster;
// in-process the emulated size when one is set (a GPU-sized profile), else the model's.
double segment_bytes(scaler_actor* self, int32_t layer) {
  const auto& st = self->state;
  auto l = layout_of(st.m->config);
  double real = double(l.bytes[size_t(layer + 1) % l.bytes.size()]);
  double emulated = layer < 0 ? st.opt.globals_bytes : st.opt.layer_bytes;
  return !st.opt.cluster.controller && emulated > 0 ? emulated : real;
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

// Cluster mode: the parameters of instances started by one decision travel in one multicast,
// from every node holding them (or only the host copy when the policy loads from it).
void multicast_to(scaler_actor* self, std::vector<uint32_t> ids) {
  auto& st = self->state;
  auto spec = st.policy->loading();
  int L = st.m->config.n_layers;
  multicast_request req;
  req.model = st.opt.cluster.model;
  req.chunk_bytes = st.opt.cluster.chunk_bytes;
  // BlitzScale chains from every holder; λScale spreads blocks over a binomial pipeline; a
  // stop-the-world instance fetches the whole model by itself.
  req.plan = st.opt.cluster.plan;
  if (req.plan.empty()) req.plan = !spec.live ? "one-to-one" : spec.pipeline ? "binomial-pipeline" : "chain";
  req.segment_order.push_back(0);
  for (int l : st.policy->load_order(L, 0)) req.segment_order.push_back(1 + l);
  std::map<std::string, uint32_t> by_node;
  for (auto id : ids) {
    req.targets.push_back(st.insts[id].node);
    by_node[st.insts[id].node] = id;
  }
  if (!spec.live) {
    // Stop-the-world loads from the host copy, as a serverless system loads from its storage.
    req.max_sources = 1;
    for (auto& [id, in] : st.insts)
      if (in.view.full()) req.busy.push_back(in.node);
  }
  self->request(st.opt.cluster.controller, std::chrono::minutes(10), multicast_atom::value, req)
      .then(
          [=](const transfer_report& r) mutable {
            char line[160];
            for (auto& t : r.targets) {
              std::snprintf(line, sizeof line, "%s: %.2f MB in %.2f s (%s)", t.node.c_str(), double(t.bytes) / 1e6,
                            t.seconds, req.plan.c_str());
              event(self, t.ok ? "loaded" : "load failed", by_node[t.node], t.ok ? line : t.node + ": " + t.error);
              if (!t.ok) stop_instance(self, by_node[t.node]);
            }
          },
          [=](caf::error& e) mutable {
            event(self, "load failed", 0, describe(e));
            for (auto& [node, id] : by_node) stop_instance(self, id);
          });
}

// The instances one decision starts in a cluster: their multicast goes out once every node has
// answered (a node that already holds the model needs none).
struct start_group {
  std::vector<uint32_t> loading;
  int pending = 0;
  void answered(scaler_actor* self) {
    if (--pending == 0 && !loading.empty()) multicast_to(self, loading);
  }
};

void start_cluster_instance(scaler_actor* self, bool preloaded, std::shared_ptr<start_group> group) {
  auto& st = self->state;
  int L = st.m->config.n_layers;
  std::set<std::string> used;
  for (auto& [id, in] : st.insts) used.insert(in.node);
  used.insert(st.lost_nodes.begin(), st.lost_nodes.end());
  std::string node;
  for (auto& n : st.opt.cluster.nodes)
    if (!used.count(n)) {
      node = n;
      break;
    }
  if (node.empty()) {
    event(self, "no node", 0, "every node hosts an instance already or was lost");
    return group->answered(self);
  }
  instance in;
  in.id = st.next++;
  in.node = node;
  in.view.id = in.id;
  in.view.have.assign(size_t(L), false);
  in.decided = preloaded ? 0 : now(self);
  uint32_t id = in.id;
  st.insts[id] = std::move(in);
  count_instances(self);
  const auto& dev = st.opt.device;
  bool local = !preloaded && st.policy->loading().local_copy && st.opt.cluster.local_mb_s > 0;
  instance_spec spec;
  spec.node = node;
  spec.model = st.opt.cluster.model;
  spec.id = id;
  spec.layer_s = dev.layer_s;
  spec.per_row_s = dev.per_row_s;
  spec.local_mb_s = local ? st.opt.cluster.local_mb_s : 0.0;
  spec.watcher = caf::actor_cast<caf::actor>(self);
  self->request(st.opt.cluster.controller, std::chrono::seconds(30), instance_atom::value, std::move(spec))
      .then(
          [=](const std::vector<caf::actor>& a) {
            auto& st = self->state;
            auto it = st.insts.find(id);
            if (it != st.insts.end() && a.size() == 3) {
              auto& in = it->second;
              in.shard = a[1];
              if (double s = st.policy->initial_share(); s < 1.0) resize_instance(self, id, s);
              if (a[0]) {  // the node holds the model: complete at once
                in.head = a[0];
                in.tail = a[2];
                in.view.globals = true;
                in.view.have.assign(in.view.have.size(), true);
                in.full_at = now(self);
                push_routes(self);
              } else {
                if (!local) group->loading.push_back(id);  // else the node loads its own copy
                event(self, "scale-out", id, "on " + in.node + ", loading from " + st.policy->loading().source);
              }
            }
            group->answered(self);
          },
          [=](caf::error& e) {
            event(self, "start failed", id, describe(e));
            stop_instance(self, id);
            group->answered(self);
          });
}

// Starts `n` instances; `preloaded`: they hold the parameters from the start (the initial ones).
void start_instances(scaler_actor* self, bool preloaded, int n) {
  auto& st = self->state;
  if (st.opt.cluster.controller) {
    if (!st.controller_lost.empty()) return;
    auto group = std::make_shared<start_group>();
    group->pending = n;
    for (int k = 0; k < n; ++k) start_cluster_instance(self, preloaded, group);
    return;
  }
  auto& sys = self->home_system();
  int L = st.m->config.n_layers;
  for (int k = 0; k < n; ++k) {
    instance in;
    in.id = st.next++;
    shard_options so;
    so.preload = preloaded;
    so.device = st.opt.device;
    so.cuda_device = st.opt.cuda_device;
    in.head = sys.spawn(head_actor, st.m);
    in.shard = sys.spawn(loading_shard_actor, st.m, layer_range{0, L}, so);
    in.tail = sys.spawn(device_tail_actor, st.m, int32_t(so.cuda_device));
    st.owned->insert(st.owned->end(), {in.head, in.shard, in.tail});
    in.view.id = in.id;
    in.view.globals = preloaded;
    in.view.have.assign(size_t(L), preloaded);
    in.decided = preloaded ? 0 : now(self);
    if (preloaded) in.full_at = 0;
    if (!preloaded) {
      auto spec = st.policy->loading();
      double bw = spec.gb_s * 1e9;
      in.loader = sys.spawn(loader_fun, st.m, in.shard, caf::actor_cast<caf::actor>(self), in.id,
                            st.policy->load_order(L, k), segment_bytes(self, -1) / bw, segment_bytes(self, 0) / bw);
      event(self, "scale-out", in.id, "loading from " + spec.source);
    }
    uint32_t id = in.id;
    st.insts[id] = std::move(in);
    count_instances(self);
    if (double s = st.policy->initial_share(); s < 1.0) resize_instance(self, id, s);
  }
}

void stop_instance(scaler_actor* self, uint32_t id) {
  auto& st = self->state;
  auto it = st.insts.find(id);
  if (it == st.insts.end()) return;
  if (!it->second.node.empty()) {
    self->send(st.opt.cluster.controller, uninstance_atom::value, it->second.node, id);
  } else {
    for (const caf::actor& a : {it->second.head, it->second.shard, it->second.tail, it->second.loader})
      if (a) {
        caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
        std::erase(*st.owned, a);
      }
  }
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

void node_lost(scaler_actor* self, const std::string& node, const std::string& why) {
  self->state.lost_nodes.insert(node);
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
    st.report.bytes_loaded += segment_bytes(self, layer);
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
  // Instances die with their scaler, whichever way it ends (nodes monitor the scaler of theirs).
  self->attach_functor([owned = st.owned] {
    for (auto& a : *owned) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  });
  if (opt.cluster.controller) {
    self->send(self, cping_atom::value);
    self->monitor(opt.cluster.controller);
    self->set_down_handler([=](caf::down_msg& dm) {
      if (dm.source == self->state.opt.cluster.controller.address()) controller_lost(self, caf::to_string(dm.reason));
    });
  }
  start_instances(self, true, std::max(1, knobs.min_instances));
  push_routes(self);
  self->send(self, scaletick_atom::value, st.tick_epoch);
  return {
      [=](scaletick_atom, uint64_t epoch) { tick(self, epoch); },
      [=](wake_atom) { tick(self, ++self->state.tick_epoch); },
      [=](lready_atom, uint32_t id, int32_t layer) { on_layer(self, id, layer); },
      [=](nodelost_atom, const std::string& node, const std::string& why) { node_lost(self, node, why); },
      [=](cping_atom) {
        // A hung controller (frozen, swapped out) keeps its connection: no monitor fires, and
        // the instance on its node hangs with it. Silence past the timeout is treated as its loss.
        auto& st = self->state;
        if (!st.controller_lost.empty()) return;
        self->request(st.opt.cluster.controller, st.opt.controller_timeout, view_atom::value)
            .then(
                [=](const cluster_view&) {
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
      [=](report_atom) {
        auto& st = self->state;
        count_instances(self);
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
