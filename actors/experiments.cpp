#include "actors/experiments.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "actors/cluster.hpp"
#include "actors/local_cluster.hpp"
#include "dataflow/model/param_image.hpp"

#include <nlohmann/json.hpp>

namespace strata {

namespace {

std::string join(const std::vector<std::string>& xs, const char* sep) {
  std::string out;
  for (auto& x : xs) out += (out.empty() ? "" : sep) + x;
  return out;
}

std::string mb_s(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g MB/s", x);
  return b;
}

status check_spec(const autoscale_spec& s) {
  if (!s.model) return make_error("autoscale: no model");
  if (s.requests.requests.empty()) return make_error("autoscale: the trace has no requests");
  if (s.policies.empty()) return make_error("autoscale: no policy to run");
  for (auto& p : s.policies)
    if (auto made = make_policy(p, s.setup.knobs, s.setup.links); !made) return made.err();
  if (s.fault) {
    if (s.cluster.nodes == 0) return make_error("--kill needs --nodes (it kills a node process)");
    bool known = s.fault->node == "src";
    for (int i = 1; i <= s.cluster.nodes; ++i) known |= s.fault->node == "n" + std::to_string(i);
    if (!known)
      return make_error("--kill: unknown node '" + s.fault->node + "' (the nodes are n1..n" + std::to_string(s.cluster.nodes) + ")");
  }
  std::vector<std::string> seen;
  for (auto& n : s.cluster.placement) {
    bool known = n == "src";
    for (int i = 1; i <= s.cluster.nodes; ++i) known |= n == "n" + std::to_string(i);
    if (!known)
      return make_error("unknown node '" + n + "' in --placement (the nodes are src and n1..n" + std::to_string(s.cluster.nodes) +
                        ")");
    if (std::find(seen.begin(), seen.end(), n) != seen.end()) return make_error("node '" + n + "' appears twice in --placement");
    seen.push_back(n);
  }
  return {};
}

}  // namespace

router_options cluster_router_options(router_options ro) {
  ro.costs.per_hop = 0.5;       // a process boundary costs more than a mailbox
  ro.readmit.grace_ms = 10000;  // a lost instance's requests may wait for the scaler's next one
  return ro;
}

expected<scaling_cluster> start_scaling_cluster(const cluster_spec& spec,
                                                const std::function<void(const std::string&)>& log_fn) {
  auto log = [&](const std::string& s) {
    if (log_fn) log_fn(s);
  };
  if (spec.models.empty()) return make_error("cluster: no model");
  if ((spec.nodes > 0) == !spec.controller.empty())
    return make_error("cluster: start node processes here (nodes > 0) or attach to a controller, not both or neither");
  scaling_cluster out;
  // A check that fails after attaching leaves the attached system undestroyed: tearing down a
  // fresh middleman connection can block in CAF 0.17 (seen: ~actor_system waiting for a detached
  // thread), and the caller is about to exit with the error. Started node processes are always
  // cleaned up.
  auto failed = [&](error e) -> expected<scaling_cluster> {
    if (out.cluster && spec.nodes == 0) (void)out.cluster.release();
    return e;
  };
  if (spec.nodes > 0) {
    local_cluster_options lo;
    lo.transport = spec.transport;
    lo.controller_models = spec.models;
    for (auto& m : spec.models) lo.model_roots.push_back(m.path);  // all-cache has every node load it from disk
    lo.tls_dir = spec.tls_dir;
    std::string extra = spec.link_mbs > 0 ? "throttle_mb_s = " + std::to_string(spec.link_mbs) + "\n" : "";
    // Room for a host copy on every node, which only all-cache asks for (cache_atom); the other
    // policies run with the one copy 'src' holds.
    int copies = spec.host_copies > 0 ? spec.host_copies : spec.nodes + 1;
    lo.controller_extra = extra + "host_copies = " + std::to_string(copies) + "\n";
    std::vector<std::string> names;
    for (auto& m : spec.models) names.push_back(m.name);
    log("starting a cluster: controller node 'src' (host copy of " + join(names, ", ") + ") and " + std::to_string(spec.nodes) +
        " node processes, UCX " + lo.transport + ", each node's egress " +
        (spec.link_mbs > 0 ? mb_s(spec.link_mbs) : std::string("unpaced")));
    auto lc = local_cluster::start(lo);
    if (!lc) return lc.err();
    out.cluster = std::move(*lc);
    out.members = {"src"};
    for (int i = 1; i <= spec.nodes; ++i) {
      auto name = "n" + std::to_string(i);
      if (auto st = out.cluster->add_node(name, extra); !st) return st.err();
      out.members.push_back(name);
    }
    if (auto st = out.cluster->wait_nodes(size_t(spec.nodes + 1)); !st) return st.err();
  } else {
    log("attaching to the cluster at " + spec.controller);
    auto lc = local_cluster::attach(spec.controller, spec.tls_dir);
    if (!lc) return lc.err();
    out.cluster = std::move(*lc);
    auto v = out.cluster->view();
    if (!v) return failed(make_error("the controller at " + spec.controller + " gave no view: " + v.message()));
    for (auto& n : v->nodes) out.members.push_back(n.name);
    // The view's order is the controller's map order; sort so placement and messages are stable.
    std::sort(out.members.begin(), out.members.end());
  }
  for (auto& n : spec.placement)
    if (std::find(out.members.begin(), out.members.end(), n) == out.members.end())
      return failed(
          make_error("unknown node '" + n + "' in the placement (the cluster's nodes: " + join(out.members, ", ") + ")"));
  for (auto& m : spec.models)
    if (auto st = out.cluster->wait_host_copy(m.name, spec.nodes > 0 ? std::chrono::seconds(60) : std::chrono::seconds(5));
        !st)
      return failed(make_error("no node of the cluster holds a host copy of '" + m.name + "': " + st.message()));
  out.placement.controller = out.cluster->controller();
  out.placement.model = spec.models.front().name;
  out.placement.chunk_bytes = spec.chunk_bytes;
  // Which nodes may host instances, in the order they are used (the first serves from the
  // start; a node without the host copy loads it first).
  out.placement.nodes = spec.placement.empty() ? out.members : spec.placement;
  out.placement.follow_view = spec.placement.empty();
  log("cluster up (" + std::to_string(out.members.size()) + " nodes: " + join(out.members, ", ") + "; logs in " +
      (out.cluster->work_dir().empty() ? std::string("each node's own place") : out.cluster->work_dir()) + ")");
  return out;
}

expected<autoscale_result> run_autoscale_experiment(const autoscale_spec& spec, const autoscale_hooks& hooks) {
  auto log = [&](const std::string& s) {
    if (hooks.log) hooks.log(s);
  };
  if (auto ok = check_spec(spec); !ok) return ok.err();
  const auto& k = spec.setup.knobs;
  const auto& links = spec.setup.links;
  scaler_options so = spec.setup.so;  // the cluster's part is filled in here
  const auto& m = spec.model;
  slo_spec slo;
  slo.ttft_s = k.ttft_slo_s;
  slo.tbt_s = k.tbt_slo_s;
  autoscale_result result;
  // Cluster mode: instances live in node processes, parameters move over UCX.
  std::unique_ptr<local_cluster> cluster;
  std::vector<std::string> all_nodes;  // src, n1..nN
  if (spec.cluster.nodes > 0) {
    cluster_spec cs = spec.cluster;
    cs.models = {{"model", spec.model_path}};
    auto sc = start_scaling_cluster(cs, log);
    if (!sc) return sc.err();
    cluster = std::move(sc->cluster);
    all_nodes = sc->members;
    so.cluster = sc->placement;
    // all-cache loads from a node's own copy as much faster than the network as the in-process
    // profile's host path is (PCIe vs network), scaled like the paced links.
    so.cluster.local_mb_s = cs.link_mbs > 0 ? cs.link_mbs * links.local_host_gb_s / links.network_gb_s : 0;
    result.cluster_dir = cluster->work_dir();
    char line[256];
    std::snprintf(line, sizeof line, "device %.2f ms/layer + %.3f ms/row; parameters %.2f MB, multicast in %.0f KiB chunks",
                  so.device.layer_s * 1e3, so.device.per_row_s * 1e3, double(layout_of(m->config).total) / 1e6,
                  double(so.cluster.chunk_bytes) / 1024);
    log(line);
  } else {
    char line[256];
    std::snprintf(line, sizeof line,
                  "emulated profile: %.0f MB per layer, %.0f MB globals, device %.2f ms/layer + %.3f ms/row; links: "
                  "network %.1f GB/s, host %.1f GB/s, remote %.1f GB/s",
                  so.layer_bytes / 1e6, so.globals_bytes / 1e6, so.device.layer_s * 1e3, so.device.per_row_s * 1e3,
                  links.network_gb_s, links.local_host_gb_s, links.remote_gb_s);
    log(line);
  }
  for (auto& name : spec.policies) {
    auto pol = make_policy(name, k, links);
    if (!pol) return pol.err();
    policy_run run;
    run.policy = name;
    run.live = (*pol)->loading().live;
    bool all_cache = (*pol)->loading().local_copy;
    run.loads_from = (*pol)->loading().source;
    if (cluster && all_cache)
      run.loads_from = "the host copy on their own node" +
                       (so.cluster.local_mb_s > 0 ? " at " + mb_s(so.cluster.local_mb_s) : std::string());
    else if (cluster && !run.live)
      run.loads_from = "the host copy (over the same links)";
    if (hooks.starting) hooks.starting(run);
    if (cluster && all_cache) {
      // A host copy on every node for this policy only, loaded from disk by each node.
      caf::scoped_actor self{cluster->system()};
      for (size_t i = 1; i < all_nodes.size(); ++i) {
        std::string err;
        self->request(cluster->controller(), std::chrono::seconds(90), cache_atom::value, all_nodes[i],
                      std::string("model"), spec.model_path)
            .receive([](bool) {}, [&](caf::error& e) { err = describe(e); });
        if (!err.empty()) return make_error("caching the model on " + all_nodes[i] + ": " + err);
      }
    }
    std::optional<caf::actor_system_config> own_cfg;
    std::optional<caf::actor_system> own;
    if (!cluster) {
      own_cfg.emplace();
      register_strata_types(*own_cfg);
      own.emplace(*own_cfg);
    }
    auto& sys = cluster ? cluster->system() : *own;
    router_options ro = spec.setup.ro;
    if (cluster) {
      ro = cluster_router_options(ro);
      so.cluster.controller = cluster->controller();  // a new one after a fault on src
    }
    auto router = spawn_router(sys, m, std::vector<route_ptr>{}, ro);
    auto scaler = spawn_scaler(sys, m, router, std::shared_ptr<scaling_policy>(std::move(*pol)), k, so);
    {
      stop_guard guard{{scaler, router}};
      std::thread killer;
      std::atomic<bool> replay_done{false};
      std::atomic<double> fault_at{-1};
      auto t_start = std::chrono::steady_clock::now();
      if (spec.fault)
        killer = std::thread([&] {
          auto when = t_start + std::chrono::microseconds(int64_t(spec.fault->at_s * 1e6));
          while (!replay_done && std::chrono::steady_clock::now() < when)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          if (replay_done) return;
          (void)cluster->signal(spec.fault->node, spec.fault->signal);
          fault_at = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
        });
      auto records = replay(sys, router, spec.requests, spec.replay);
      replay_done = true;
      if (killer.joinable()) killer.join();
      if (!records) return records.err();
      run.records = std::move(*records);
      run.fault_at_s = fault_at;
      caf::scoped_actor self{sys};
      self->request(router, std::chrono::seconds(5), stats_atom::value)
          .receive([&](router_stats& s) { run.router = s; }, [](caf::error&) {});
      self->request(scaler, std::chrono::seconds(5), report_atom::value)
          .receive([&](scaling_report& r) { run.report = std::move(r); }, [](caf::error&) {});
    }
    run.summary = summarize_replay(run.records, slo);
    if (hooks.finished)
      if (auto st = hooks.finished(run); !st) return st.err();
    if (cluster) {
      if (all_cache && !(spec.fault && spec.fault->node == "src")) {
        caf::scoped_actor self{cluster->system()};
        for (size_t i = 1; i < all_nodes.size(); ++i)
          self->request(cluster->controller(), std::chrono::seconds(10), uncache_atom::value, all_nodes[i],
                        std::string("model"))
              .receive([](bool) {}, [](caf::error&) {});
      }
      // The next policy starts from the same state: every node up, only the host copy holds the
      // model (after the controller's death, a whole new cluster).
      if (spec.fault) {
        if (auto st = cluster->restart(spec.fault->node); !st)
          return make_error("restarting " + spec.fault->node + ": " + st.message());
        if (auto st = cluster->wait_nodes(size_t(spec.cluster.nodes + 1)); !st) return st.err();
      }
      if (auto st = cluster->wait_only_host_copies("model"); !st) return st.err();
    }
    result.runs.push_back(std::move(run));
  }
  return result;
}

expected<replay_result> run_replay_experiment(const replay_spec& spec) {
  if (!spec.model) return make_error("replay: no model");
  if (spec.requests.requests.empty()) return make_error("replay: the trace has no requests");
  auto shards = spec.shards.empty() ? std::vector<layer_range>{{0, spec.model->config.n_layers}} : spec.shards;
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};
  auto p = spawn_pipeline(sys, spec.model, shards);
  if (!p) return p.err();
  stop_guard guard;
  guard.pipelines.push_back(*p);
  auto router = spawn_router(sys, spec.model, p->path, spec.ro);
  guard.actors.push_back(router);
  auto records = replay(sys, router, spec.requests, spec.replay);
  if (!records) return records.err();
  replay_result r;
  r.records = std::move(*records);
  r.summary = summarize_replay(r.records, spec.slo);
  caf::scoped_actor self{sys};
  self->request(router, std::chrono::seconds(5), stats_atom::value)
      .receive([&](router_stats& s) { r.router = s; }, [](caf::error&) {});
  return r;
}

namespace {

nlohmann::json json_of(const router_stats& s) {
  return {{"tokens", s.tokens},          {"finished", s.finished},           {"migrations", s.migrations},
          {"kv_migrations", s.kv_migrations}, {"kv_bytes_moved", s.kv_bytes_moved}, {"readmissions", s.readmissions}};
}

nlohmann::json json_of(const scaling_report& r) {
  auto events = nlohmann::json::array();
  for (auto& e : r.events) events.push_back({{"t_s", e.t}, {"what", e.what}, {"instance", e.instance}, {"detail", e.detail}});
  auto instances = nlohmann::json::array();
  for (auto& [t, n] : r.instances) instances.push_back({t, n});
  return {{"events", events},
          {"instances", instances},
          {"to_first_layer_s", r.to_first_layer_s},
          {"to_full_s", r.to_full_s},
          {"instance_seconds", r.instance_seconds},
          {"device_seconds", r.device_seconds},
          {"migrations", r.migrations},
          {"kv_migrations", r.kv_migrations},
          {"kv_bytes_moved", r.kv_bytes_moved},
          {"layers_loaded", r.layers_loaded},
          {"bytes_loaded", r.bytes_loaded}};
}

}  // namespace

std::string results_json(const replay_result& r) {
  nlohmann::json j = {{"summary", json_of(r.summary)}, {"router", json_of(r.router)}, {"requests", json_of(r.records)}};
  return j.dump(1) + "\n";
}

std::string results_json(const autoscale_result& r) {
  auto runs = nlohmann::json::array();
  for (auto& p : r.runs) {
    nlohmann::json j = {{"policy", p.policy},           {"loads_from", p.loads_from},
                        {"live", p.live},               {"summary", json_of(p.summary)},
                        {"scaling", json_of(p.report)}, {"router", json_of(p.router)},
                        {"requests", json_of(p.records)}};
    j["fault_at_s"] = p.fault_at_s >= 0 ? nlohmann::json(p.fault_at_s) : nlohmann::json(nullptr);
    runs.push_back(std::move(j));
  }
  nlohmann::json j = {{"policies", runs}};
  if (!r.cluster_dir.empty()) j["cluster_dir"] = r.cluster_dir;
  return j.dump(1) + "\n";
}

}  // namespace strata
