#include "dataflow/scaling/scaling.hpp"

#include "dataflow/registry.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace strata {

bool instance_view::full() const {
  return globals && std::all_of(have.begin(), have.end(), [](bool b) { return b; });
}

int instance_view::layers() const { return int(std::count(have.begin(), have.end(), true)); }

expected<route_plan> plan_route(uint32_t head, const std::vector<instance_view>& instances, int n_layers,
                                bool prefer_loading, uint32_t lean_on) {
  const instance_view* self = nullptr;
  for (auto& i : instances)
    if (i.id == head) self = &i;
  if (!self) return make_error("unknown instance " + std::to_string(head));
  if (!self->globals) return make_error("instance " + std::to_string(head) + " has no embedding yet");
  auto has = [](const instance_view& i, int l) { return size_t(l) < i.have.size() && i.have[size_t(l)]; };
  route_plan r;
  r.head = head;
  int l = 0;
  while (l < n_layers) {
    const instance_view* pick = nullptr;
    if (has(*self, l)) pick = self;
    if (!pick && prefer_loading)
      for (auto& i : instances)
        if (!i.draining && !i.full() && has(i, l)) {
          pick = &i;
          break;
        }
    if (!pick) {
      // Spread cooperative work: each loading instance leans on a different full one.
      std::vector<const instance_view*> full;
      for (auto& i : instances)
        if (!i.draining && i.full()) full.push_back(&i);
      for (auto* f : full)
        if (f->id == lean_on) pick = f;
      if (!pick && !full.empty()) pick = full[head % full.size()];
    }
    if (!pick)
      for (auto& i : instances)
        if (has(i, l)) {
          pick = &i;
          break;
        }
    if (!pick) return make_error("layer " + std::to_string(l) + " is held by no instance");
    int e = l;
    while (e < n_layers && has(*pick, e)) ++e;
    r.stops.push_back({pick->id, l, e});
    l = e;
  }
  // The tail runs where the last layer ran if that instance has the classifier, else at home.
  uint32_t last = r.stops.empty() ? head : r.stops.back().instance;
  r.tail = head;
  for (auto& i : instances)
    if (i.id == last && i.globals) r.tail = last;
  return r;
}

std::string to_string(const route_plan& r) {
  std::ostringstream os;
  os << "i" << r.head << ":head";
  for (auto& s : r.stops) os << " -> i" << s.instance << "[" << s.begin << "," << s.end << ")";
  os << " -> i" << r.tail << ":tail";
  return os.str();
}

std::map<uint32_t, double> step_times(const std::vector<route_shape>& routes, const split_costs& c) {
  std::map<uint32_t, int> most;
  std::map<uint32_t, double> row_layers;
  for (auto& r : routes) {
    if (r.running <= 0) continue;
    std::map<uint32_t, int> here;
    for (auto& [inst, layers] : r.stops) here[inst] += layers;
    for (auto& [inst, layers] : here) {
      most[inst] = std::max(most[inst], layers);
      row_layers[inst] += double(r.running) * layers;
    }
  }
  std::map<uint32_t, double> t;
  for (auto& [inst, layers] : most) t[inst] = c.per_layer * layers + c.per_row * row_layers[inst];
  return t;
}

double token_time(const route_shape& r, const std::map<uint32_t, double>& step, const split_costs& c) {
  double t = 0;
  uint32_t prev = 0;
  bool first = true;
  std::vector<uint32_t> seen;
  for (auto& [inst, layers] : r.stops) {
    if (!first && inst != prev) t += c.per_hop;
    first = false;
    prev = inst;
    if (std::find(seen.begin(), seen.end(), inst) != seen.end()) continue;
    seen.push_back(inst);
    auto it = step.find(inst);
    if (it != step.end()) t += it->second;
  }
  return t;
}

double total_token_time(const std::vector<route_shape>& routes, const split_costs& c) {
  auto step = step_times(routes, c);
  double sum = 0;
  for (auto& r : routes)
    if (r.running > 0) sum += r.running * token_time(r, step, c);
  return sum;
}

int pick_split(std::vector<route_shape> routes, const std::vector<size_t>& candidates, const split_costs& c) {
  int best = -1;
  double best_cost = 0;
  for (auto i : candidates) {
    if (i >= routes.size()) continue;
    ++routes[i].running;
    double cost = total_token_time(routes, c);
    --routes[i].running;
    if (best < 0 || cost < best_cost - 1e-12) {
      best = int(i);
      best_cost = cost;
    }
  }
  return best;
}

std::vector<int> scaling_policy::load_order(int n_layers, int) const {
  std::vector<int> o;
  for (int l = 0; l < n_layers; ++l) o.push_back(l);
  return o;
}

std::vector<uint32_t> drained(const std::vector<uint32_t>& draining, const std::map<uint32_t, uint32_t>& in_use) {
  std::vector<uint32_t> out;
  for (auto id : draining) {
    auto u = in_use.find(id);
    if (u == in_use.end() || u->second == 0) out.push_back(id);
  }
  return out;
}

threshold_policy::threshold_policy(std::string name, load_spec spec, scaling_knobs knobs)
    : name_(std::move(name)), spec_(std::move(spec)), knobs_(knobs) {}

bool threshold_policy::under_pressure(const load_view& v) const {
  // Served quality below the floor while requests run: SlackFit is trading quality for deadlines
  // (it keeps the queue short, so the signals below may never fire).
  if (knobs_.min_quality > 0 && v.running > 0 && v.quality_ema >= 0 && v.quality_ema < knobs_.min_quality) return true;
  // Pressure needs a queue: latency averages alone linger after a burst has been absorbed.
  return v.waiting > 0 && (double(v.waiting) > knobs_.queue_per_instance * std::max(1, v.full) ||
                           v.ttft_ema_s > knobs_.ttft_slo_s || v.tbt_ema_s > knobs_.tbt_slo_s ||
                           v.kv_use > knobs_.kv_high);
}

scale_decision threshold_policy::decide(const load_view& v) {
  scale_decision d;
  int serving = std::max(1, v.full);
  int total = v.full + v.loading;
  bool pressure = under_pressure(v);
  if (total < knobs_.min_instances) {
    d.add = knobs_.min_instances - total;
  } else if (total == 0 && v.waiting > 0 && knobs_.max_instances > 0) {
    // Scale from zero: a request for a model with no instance starts one at once (no queue
    // threshold, no cooldown), more if the queue already asks for them.
    int want = int(double(v.waiting) / knobs_.queue_per_instance + 0.999);
    d.add = std::clamp(want, 1, knobs_.max_instances);
  } else if (pressure && v.loading == 0 && total < knobs_.max_instances && v.now - last_out_ >= knobs_.cooldown_s) {
    // Enough instances for the queue at queue_per_instance each, at least one, within max.
    int want = int(double(v.waiting) / knobs_.queue_per_instance + 0.999);
    d.add = std::clamp(want - serving, 1, knobs_.max_instances - total);
  }
  if (d.add > 0) {
    last_out_ = v.now;
    return d;
  }
  if (v.waiting == 0 && v.loading == 0) {
    int can_remove = v.full - knobs_.min_instances;
    for (auto& [id, idle] : v.idle_for_s)
      if (can_remove > 0 && idle >= knobs_.keep_alive_s) {
        d.remove.push_back(id);
        --can_remove;
      }
  }
  return d;
}

namespace {
// The smallest multiple of `step` at or above x (shares come in partition-sized steps).
double round_up_to_step(double x, double step) { return std::ceil(x / step - 1e-9) * step; }
}  // namespace

double predict_share(double share, double tbt_s, double slo_s, double step) {
  step = std::clamp(step, 1e-3, 1.0);
  double want = tbt_s > 0 && slo_s > 0 ? share * tbt_s / (slo_s / 2) : share;
  return std::clamp(round_up_to_step(want, step), step, 1.0);
}

has_gpu_policy::has_gpu_policy(std::string name, load_spec spec, scaling_knobs knobs)
    : threshold_policy(std::move(name), std::move(spec), knobs), next_share_(knobs.min_share) {}

scale_decision has_gpu_policy::decide(const load_view& v) {
  const double step = std::clamp(knobs_.min_share, 1e-3, 1.0), eps = 1e-9;
  auto share_of = [&](uint32_t id) {  // an instance that cannot be resized: a whole device
    auto it = v.share.find(id);
    return it == v.share.end() ? 1.0 : it->second;
  };
  auto since_resize = [&](uint32_t id) {
    auto it = last_resize_.find(id);
    return it == last_resize_.end() ? 1e18 : v.now - it->second;
  };
  auto resize = [&](scale_decision& d, uint32_t id, double to) {
    d.resize[id] = to;
    last_resize_[id] = v.now;
  };
  bool tbt_high = v.tbt_ema_s > knobs_.tbt_slo_s;
  scale_decision d;
  // Vertical first: while a serving instance holds less than a whole device, grow shares (a full
  // KV cache is the exception: more compute does not give it room, another instance does).
  if (under_pressure(v) && v.kv_use <= knobs_.kv_high) {
    bool below_whole = false;
    for (auto& [id, share] : v.share) {
      if (share >= 1.0 - eps) continue;
      below_whole = true;
      if (since_resize(id) < knobs_.cooldown_s) continue;  // let the last resize show its effect
      double to = tbt_high ? std::max(predict_share(share, v.tbt_ema_s, knobs_.tbt_slo_s, step), share + step) : 1.0;
      resize(d, id, std::min(1.0, to));
    }
    if (below_whole) return d;
  }
  d = threshold_policy::decide(v);
  d.remove.clear();
  next_share_ = v.full + v.loading < knobs_.min_instances ? knobs_.min_share : 1.0;
  if (v.waiting > 0 || v.loading > 0) return d;
  // Scaling in, vertical first: shrink what runs faster than it needs to or idles, at most by
  // half per keep-alive; remove only what has sat at min_share for a keep-alive.
  int can_remove = v.full - knobs_.min_instances;
  for (auto& [id, share] : v.share) {
    if (share <= step + eps || since_resize(id) < knobs_.keep_alive_s) continue;
    auto idle = v.idle_for_s.find(id);
    bool idle_long = idle != v.idle_for_s.end() && idle->second >= knobs_.keep_alive_s;
    // A busy instance only shrinks while first tokens come fast too: no queue building lately.
    bool calm = v.ttft_ema_s <= knobs_.ttft_slo_s / 2;
    double to = idle_long ? step : calm ? predict_share(share, v.tbt_ema_s, knobs_.tbt_slo_s, step) : share;
    to = std::max(to, round_up_to_step(share / 2, step));
    if (to < share - eps) resize(d, id, to);
  }
  for (auto& [id, idle] : v.idle_for_s)
    if (can_remove > 0 && idle >= knobs_.keep_alive_s && share_of(id) <= step + eps &&
        since_resize(id) >= knobs_.keep_alive_s) {
      d.remove.push_back(id);
      --can_remove;
    }
  for (auto id : d.remove) last_resize_.erase(id);
  return d;
}

namespace {

// λScale: instances started together load complementary orders so that, between them, every
// layer arrives early and they can serve as one pipeline before any holds the whole model.
class lambda_policy : public threshold_policy {
 public:
  using threshold_policy::threshold_policy;
  std::vector<int> load_order(int n_layers, int k) const override {
    auto o = scaling_policy::load_order(n_layers, k);
    if (k % 2 == 1) std::rotate(o.begin(), o.begin() + n_layers / 2, o.end());
    return o;
  }
  scale_decision decide(const load_view& v) override {
    auto d = threshold_policy::decide(v);
    if (d.add % 2 == 1 && v.full + v.loading + d.add < max_) ++d.add;  // start them in pairs
    return d;
  }
  int max_ = 0;
};

}  // namespace

namespace {

template <class P>
std::unique_ptr<scaling_policy> make_as(const std::string& name, load_spec spec, const scaling_knobs& k) {
  return std::make_unique<P>(name, std::move(spec), k);
}

registry<policy_entry>& policies() {
  static registry<policy_entry> r("policy", [] {
    auto blitz = [](const scaling_knobs& k, const link_speeds& l) {
      return make_as<threshold_policy>("blitz", {l.network_gb_s, true, false, "network multicast from running instances"}, k);
    };
    auto lambda = [](const scaling_knobs& k, const link_speeds& l) -> std::unique_ptr<scaling_policy> {
      auto p = std::make_unique<lambda_policy>(
          "lambda-pipe", load_spec{l.network_gb_s, true, true, "network multicast, execute-while-load pipelines"}, k);
      p->max_ = k.max_instances;
      return p;
    };
    auto stw = [](const scaling_knobs& k, const link_speeds& l) {
      return make_as<threshold_policy>("stop-the-world", {l.remote_gb_s, false, false, "remote host copy"}, k);
    };
    auto all_cache = [](const scaling_knobs& k, const link_speeds& l) {
      return make_as<threshold_policy>("all-cache", {l.local_host_gb_s, false, false, "host copy on every node", true}, k);
    };
    auto has_gpu = [](const scaling_knobs& k, const link_speeds& l) {
      return make_as<has_gpu_policy>("has-gpu", {l.network_gb_s, true, false, "network multicast from running instances"}, k);
    };
    return std::vector<policy_entry>{
      {"blitz", "BlitzScale: multicast from running instances, serve while loading (cooperative routes)", blitz},
      {"lambda-pipe", "lambdaScale: instances in pairs loading complementary halves, execute-while-load pipelines",
       lambda},
      {"all-cache", "a host copy on every node: load from it, serve once complete", all_cache},
      {"stop-the-world", "load from a remote host copy, serve once complete (the baseline)", stw},
      {"has-gpu", "HAS-GPU: grow an instance's compute share before adding instances; blitz loading", has_gpu},
    };
  }());
  return r;
}

registry<route_scheduler>& schedulers() {
  static registry<route_scheduler> r("route scheduler", {
    {"zigzag", "the route that adds the least time per token over all running requests (BlitzScale's ZigZag)",
     [](const route_choice& c) { return pick_split(c.routes, c.candidates, c.costs); }, true},
    {"least-loaded", "the route whose instance runs the fewest requests (the first on ties)",
     [](const route_choice& c) {
       int best = -1;
       for (auto i : c.candidates)
         if (best < 0 || c.instance_load[i] < c.instance_load[size_t(best)]) best = int(i);
       return best;
     }},
  });
  return r;
}

}  // namespace

status register_policy(policy_entry e) {
  if (!e.make) return make_error("policy '" + e.name + "' needs a factory");
  return policies().add(std::move(e));
}

std::vector<policy_entry> scaling_policies() { return policies().all(); }

status register_route_scheduler(route_scheduler e) {
  if (!e.pick) return make_error("route scheduler '" + e.name + "' needs a pick function");
  return schedulers().add(std::move(e));
}

std::vector<route_scheduler> route_schedulers() { return schedulers().all(); }

expected<route_scheduler> find_route_scheduler(const std::string& name) { return schedulers().find(name); }

expected<std::unique_ptr<scaling_policy>> make_policy(const std::string& name, const scaling_knobs& k,
                                                      const link_speeds& l) {
  auto e = policies().find(name);
  if (!e) return make_error(e.message() + "; see strata policies");
  return e->make(k, l);
}

}  // namespace strata
