#include "actors/instance_provider.hpp"

#include <map>

#include "actors/cluster.hpp"
#include "actors/scaler.hpp"
#include "dataflow/model/param_image.hpp"

namespace strata {

namespace {

std::chrono::microseconds us(double seconds) { return std::chrono::microseconds(int64_t(seconds * 1e6)); }

double real_segment_bytes(const model_config& c, int32_t layer) {
  auto l = layout_of(c);
  return double(l.bytes[size_t(layer + 1) % l.bytes.size()]);
}

// Streams an instance's parameters into its shard: the globals, then layers in `order`, each
// after the time its bytes take on the link; announces each to the scaler as it lands.
struct loader_state {
  static inline const char* name = "strata.loader";
};
caf::behavior loader_fun(caf::stateful_actor<loader_state>* self, model_ptr m, caf::actor shard, caf::actor scaler,
                         uint32_t id, std::vector<int> order, double globals_s, double layer_s) {
  self->delayed_send(self, us(globals_s), lready_atom::value, int32_t(-1), size_t(0));
  return {
      [=](lready_atom, int32_t layer, size_t next) {
        if (layer >= 0) self->send(shard, load_atom::value, layer, layer_ptr(m->layers[size_t(layer)]));
        self->send(scaler, layerin_atom::value, id, layer, std::vector<caf::actor>{});
        if (next < order.size())
          self->delayed_send(self, us(layer_s), lready_atom::value, int32_t(order[next]), next + 1);
        else
          self->quit();
      },
  };
}

class in_process_provider : public instance_provider {
 public:
  in_process_provider(caf::event_based_actor* self, model_ptr m, std::shared_ptr<scaling_policy> policy,
                      const scaler_options& opt, provider_reports r)
      : self_(self), m_(std::move(m)), policy_(std::move(policy)), opt_(opt), r_(std::move(r)) {}

  std::vector<std::string> places(int n, const std::set<std::string>&, std::string&) override {
    return std::vector<std::string>(size_t(std::max(0, n)));
  }

  void start(const std::vector<placement>& group, bool preloaded) override {
    auto& sys = self_->home_system();
    int L = m_->config.n_layers;
    for (size_t k = 0; k < group.size(); ++k) {
      auto id = group[k].id;
      shard_options so;
      so.preload = preloaded;
      so.device = opt_.device;
      so.cuda_device = opt_.cuda_device;
      auto& a = actors_[id];
      a.head = sys.spawn(head_actor, m_);
      a.shard = sys.spawn(loading_shard_actor, m_, layer_range{0, L}, so);
      a.tail = sys.spawn(device_tail_actor, m_, int32_t(so.cuda_device));
      if (!preloaded) {
        double bw = policy_->loading().gb_s * 1e9;
        a.loader = sys.spawn(loader_fun, m_, a.shard, caf::actor_cast<caf::actor>(self_), id,
                             policy_->load_order(L, int(k)), segment_bytes(-1) / bw, segment_bytes(0) / bw);
      }
      r_.placed(id, {a.head, a.shard, a.tail}, preloaded);
    }
  }

  void stop(const placement& p) override {
    auto it = actors_.find(p.id);
    if (it == actors_.end()) return;
    for (const caf::actor& a : {it->second.head, it->second.shard, it->second.tail, it->second.loader})
      if (a) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    actors_.erase(it);
  }

  // In this process the emulated size when one is set (a GPU-sized profile), else the model's.
  double segment_bytes(int32_t layer) const override {
    double emulated = layer < 0 ? opt_.globals_bytes : opt_.layer_bytes;
    return emulated > 0 ? emulated : real_segment_bytes(m_->config, layer);
  }

  void shutdown() override {
    for (auto& [id, a] : actors_)
      for (const caf::actor& x : {a.head, a.shard, a.tail, a.loader})
        if (x) caf::anon_send_exit(x, caf::exit_reason::user_shutdown);
    actors_.clear();
  }

 private:
  struct owned {
    caf::actor head, shard, tail, loader;
  };
  caf::event_based_actor* self_;
  model_ptr m_;
  std::shared_ptr<scaling_policy> policy_;
  scaler_options opt_;
  provider_reports r_;
  std::map<uint32_t, owned> actors_;
};

class cluster_provider : public instance_provider, public std::enable_shared_from_this<cluster_provider> {
 public:
  cluster_provider(caf::event_based_actor* self, model_ptr m, std::shared_ptr<scaling_policy> policy,
                   const scaler_options& opt, provider_reports r)
      : self_(self), m_(std::move(m)), policy_(std::move(policy)), opt_(opt), r_(std::move(r)) {}

  void on_view(const cluster_view& v) override {
    view_ = v;
    if (!opt_.cluster.follow_view) return;
    for (auto& n : v.nodes)  // a node that joined is used by the next placement, after the others
      if (std::find(opt_.cluster.nodes.begin(), opt_.cluster.nodes.end(), n.name) == opt_.cluster.nodes.end())
        opt_.cluster.nodes.push_back(n.name);
  }

  // Nodes in placement order with room for the model (nodes_with_room, on the last view).
  std::vector<std::string> places(int n, const std::set<std::string>& in_use, std::string& why) override {
    auto skip = in_use;
    skip.insert(lost_.begin(), lost_.end());
    return nodes_with_room(view_, opt_.cluster.model, layout_of(m_->config).total, opt_.cluster.nodes, skip, n, why);
  }

  // Each node is asked to host its instance; once every one answered, the parameters of those
  // that need them travel in one multicast (a node that holds the model needs none; an
  // all-cache instance loads from its node's own copy).
  void start(const std::vector<placement>& group, bool preloaded) override {
    if (group.empty()) return;
    auto pending = std::make_shared<size_t>(group.size());
    auto loading = std::make_shared<std::vector<placement>>();
    auto self = shared_from_this();
    const auto& dev = opt_.device;
    bool local = !preloaded && policy_->loading().local_copy && opt_.cluster.local_mb_s > 0;
    for (auto& p : group) {
      instance_spec spec;
      spec.node = p.where;
      spec.model = opt_.cluster.model;
      spec.id = p.id;
      spec.layer_s = dev.layer_s;
      spec.per_row_s = dev.per_row_s;
      spec.local_mb_s = local ? opt_.cluster.local_mb_s : 0.0;
      spec.watcher = caf::actor_cast<caf::actor>(self_);
      auto answered = [self, pending, loading] {
        if (--*pending == 0 && !loading->empty()) self->multicast_to(*loading);
      };
      self_->request(opt_.cluster.controller, std::chrono::seconds(30), instance_atom::value, std::move(spec))
          .then(
              [=](const std::vector<caf::actor>& a) {
                if (a.size() == 3) {
                  bool whole = bool(a[0]);
                  if (self->r_.placed(p.id, {a[0], a[1], a[2]}, whole) && !whole && !local) loading->push_back(p);
                }
                answered();
              },
              [=](caf::error& e) {
                self->r_.event(p.id, "start failed", describe(e));
                self->r_.failed(p.id);
                answered();
              });
    }
  }

  void stop(const placement& p) override {
    self_->send(opt_.cluster.controller, uninstance_atom::value, p.where, p.id);
  }

  void lose(const std::string& where) override { lost_.insert(where); }

  double segment_bytes(int32_t layer) const override { return real_segment_bytes(m_->config, layer); }

 private:
  // The parameters of instances started by one decision travel in one multicast, from every
  // node holding them (or only the host copy when the policy loads from it).
  void multicast_to(const std::vector<placement>& group) {
    auto spec = policy_->loading();
    int L = m_->config.n_layers;
    multicast_request req;
    req.model = opt_.cluster.model;
    req.chunk_bytes = opt_.cluster.chunk_bytes;
    // BlitzScale chains from every holder; λScale spreads blocks over a binomial pipeline; a
    // stop-the-world instance fetches the whole model by itself.
    req.plan = opt_.cluster.plan;
    if (req.plan.empty()) req.plan = !spec.live ? "one-to-one" : spec.pipeline ? "binomial-pipeline" : "chain";
    req.segment_order.push_back(0);
    for (int l : policy_->load_order(L, 0)) req.segment_order.push_back(1 + l);
    std::map<std::string, uint32_t> by_node;
    for (auto& p : group) {
      req.targets.push_back(p.where);
      by_node[p.where] = p.id;
    }
    if (!spec.live) {
      // Stop-the-world loads from the host copy, as a serverless system loads from its storage.
      req.max_sources = 1;
      req.busy = r_.serving_places();
    }
    auto self = shared_from_this();
    self_->request(opt_.cluster.controller, std::chrono::minutes(10), multicast_atom::value, req)
        .then(
            [=](const transfer_report& r) {
              char line[160];
              for (auto& t : r.targets) {
                auto it = by_node.find(t.node);
                uint32_t id = it == by_node.end() ? 0 : it->second;
                std::snprintf(line, sizeof line, "%s: %.2f MB in %.2f s (%s)", t.node.c_str(), double(t.bytes) / 1e6,
                              t.seconds, req.plan.c_str());
                self->r_.event(id, t.ok ? "loaded" : "load failed", t.ok ? line : t.node + ": " + t.error);
                if (!t.ok) self->r_.failed(id);
              }
            },
            [=](caf::error& e) {
              self->r_.event(0, "load failed", describe(e));
              for (auto& [node, id] : by_node) self->r_.failed(id);
            });
  }

  caf::event_based_actor* self_;
  model_ptr m_;
  std::shared_ptr<scaling_policy> policy_;
  scaler_options opt_;
  provider_reports r_;
  std::set<std::string> lost_;  // dropped by the controller: never placed on again
  cluster_view view_;  // the controller's, as last seen: draining nodes, memory and what each holds
};

}  // namespace

std::shared_ptr<instance_provider> make_instance_provider(caf::event_based_actor* scaler, model_ptr m,
                                                          std::shared_ptr<scaling_policy> policy,
                                                          const scaler_options& opt, provider_reports reports) {
  if (opt.cluster.controller)
    return std::make_shared<cluster_provider>(scaler, std::move(m), std::move(policy), opt, std::move(reports));
  return std::make_shared<in_process_provider>(scaler, std::move(m), std::move(policy), opt, std::move(reports));
}

}  // namespace strata
