// Autoscaling as data and small objects: the load a scaler sees, pluggable policies that decide
// how many instances to run and how a new one gets its parameters, and the route planner that
// lets an instance serve before it holds every layer (cooperative execution is a routing
// decision: the layers it lacks run on instances that have them).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

// What the planner knows of one instance.
struct instance_view {
  uint32_t id = 0;
  bool globals = false;     // embedding, final norm, classifier loaded: it can be head and tail
  std::vector<bool> have;   // per layer
  bool draining = false;
  bool full() const;
  int layers() const;
};

// One stop of a planned route: `instance` runs layers [begin, end).
struct route_stop {
  uint32_t instance = 0;
  int begin = 0, end = 0;
};
struct route_plan {
  uint32_t head = 0;  // embeds; also the instance the route's requests count against
  std::vector<route_stop> stops;
  uint32_t tail = 0;  // final norm, classifier, sampling
};

// A route for requests admitted by `head`: every layer from the instance itself when it has it,
// else from another instance that does (a loading peer first when `prefer_loading`, as λScale's
// execute-while-load pipelines do, else the full instance `lean_on` when it is one, else a full
// one spread over the full instances by `head`). Fails when some layer is nowhere.
expected<route_plan> plan_route(uint32_t head, const std::vector<instance_view>& instances, int n_layers,
                                bool prefer_loading = false, uint32_t lean_on = 0);

std::string to_string(const route_plan& r);

// ZigZag-style layer scheduling (after BlitzScale's ZigZag scheduler): which layers of a new
// request run on a loading instance and which on the instances that hold the rest. A loading
// instance offers one cooperative route per full partner (its loaded prefix, then the partner),
// full instances offer their own; each request joins the route that adds the least to the time
// per token summed over every running request (its own included). The cost model is a batched
// device step: an instance's step takes per_layer * (most layers any active route runs there) +
// per_row * (sum over routes of rows * layers there), and a route's time per token is the sum of
// the step times of the instances it visits plus per_hop per change of instance. So a request
// leans on the least busy partner, runs as deep on the new instance as it has layers, and joins
// a cooperative route rather than a full instance's own when that costs the others less; as
// layers land, later requests split deeper and the split zigzags with the load.
struct split_costs {
  double per_layer = 1.0;
  double per_row = 0.05;
  double per_hop = 0.5;
};

// A route as the scheduler sees it: (instance, layers run there) per stage in order, with the
// head and tail stages as zero-layer stops, and how many running requests it has.
struct route_shape {
  std::vector<std::pair<uint32_t, int>> stops;
  int running = 0;
};

// Step time per instance with these routes active (those with running requests).
std::map<uint32_t, double> step_times(const std::vector<route_shape>& routes, const split_costs& c);
// Time per token of a request on `r` given the instances' step times.
double token_time(const route_shape& r, const std::map<uint32_t, double>& step, const split_costs& c);
// Sum over running requests of their time per token.
double total_token_time(const std::vector<route_shape>& routes, const split_costs& c);
// The candidate (an index into `routes`) whose gaining one request adds the least to
// total_token_time; -1 when there is none. Ties go to the earlier candidate.
int pick_split(std::vector<route_shape> routes, const std::vector<size_t>& candidates, const split_costs& c);

// What a route scheduler sees when a waiting request starts: the routes offered to new requests
// (first, in the router's order) and the others still in use, each with its running requests;
// which offered ones have room; and per route the running requests of its own instance.
struct route_choice {
  std::vector<route_shape> routes;
  std::vector<size_t> candidates;   // indices into routes
  std::vector<int> instance_load;   // per route
  split_costs costs;
};

// The route scheduler registry: name -> a pick (an index among the candidates, or -1). Built in:
// zigzag (pick_split) and least-loaded; `strata policies` lists them.
struct route_scheduler {
  std::string name;
  std::string description;
  std::function<int(const route_choice&)> pick;
  // A loading instance offers it one cooperative route per full partner to choose from (else one).
  bool wants_splits = false;
};
status register_route_scheduler(route_scheduler s);
std::vector<route_scheduler> route_schedulers();
expected<route_scheduler> find_route_scheduler(const std::string& name);

// The load a scaler sees at one tick.
struct load_view {
  double now = 0;              // seconds since the scaler started
  uint32_t waiting = 0;        // requests admitted, not yet running
  uint32_t running = 0;
  double ttft_ema_s = 0;
  double tbt_ema_s = 0;
  double quality_ema = -1;     // served quality of SLO-chosen subnets, smoothed (-1: none)
  double tokens_per_s = 0;     // generated over the last tick
  double kv_use = 0;           // KV positions held / what the serving instances can hold
  int full = 0;                // instances holding every layer and serving
  int loading = 0;             // instances still receiving parameters
  std::map<uint32_t, uint32_t> running_by_instance;
  std::map<uint32_t, double> idle_for_s;  // serving instances: seconds without a running request
  std::map<uint32_t, double> share;       // serving instances that can be resized: compute share (1: a device)
};

struct scale_decision {
  int add = 0;                     // instances to start
  std::vector<uint32_t> remove;    // instances to drain and stop
  std::map<uint32_t, double> resize;  // instance -> new compute share (vertical scaling)
};

// How a new instance receives its parameters.
struct load_spec {
  double gb_s = 10;          // GB/s of the path the parameters come over
  bool live = false;         // serve with the layers it has (cooperative execution)
  bool pipeline = false;     // λScale: loading instances serve each other's missing layers
  std::string source;        // for reports: "network multicast from instances", "host copy", ...
  bool local_copy = false;   // every node keeps a host copy and loads from it (all-cache)
};

struct scaling_knobs {
  int min_instances = 1;
  int max_instances = 4;
  double queue_per_instance = 4;  // waiting requests per serving instance that trigger scale-out
  double ttft_slo_s = 1.0;        // smoothed TTFT above this triggers scale-out
  double tbt_slo_s = 0.2;         // smoothed time between tokens above this triggers scale-out
  double kv_high = 0.9;           // KV-cache use above this triggers scale-out
  double keep_alive_s = 3.0;      // an idle instance above the minimum is removed after this
  double cooldown_s = 0.5;        // no new scale-out decision within this after the last
  double min_share = 0.25;        // has-gpu: a new instance's compute share, and the smallest
  // Subnet-aware: served quality (load_view::quality_ema) below this while requests run triggers
  // scale-out (0: off). SlackFit holds the deadlines by serving smaller subnets; this brings the
  // whole model back by adding instances.
  double min_quality = 0;
};

// The draining instances that may stop now: no running request's route touches them (a
// cooperative route leaning on one keeps it, whatever else has left).
std::vector<uint32_t> drained(const std::vector<uint32_t>& draining, const std::map<uint32_t, uint32_t>& in_use);

// A scaling policy: researchers subclass this (or threshold_policy) to try new ones.
class scaling_policy {
 public:
  virtual ~scaling_policy() = default;
  virtual std::string name() const = 0;
  virtual load_spec loading() const = 0;
  // Layer order for the k-th instance started by one decision (λScale: complementary orders).
  virtual std::vector<int> load_order(int n_layers, int k) const;
  virtual scale_decision decide(const load_view& v) = 0;
  // The compute share a new instance starts with (1: a whole device).
  virtual double initial_share() const { return 1.0; }
};

// Scale out on queue or TTFT pressure, in on idleness, within [min, max]; the policies below
// differ only in how a new instance loads.
class threshold_policy : public scaling_policy {
 public:
  threshold_policy(std::string name, load_spec spec, scaling_knobs knobs);
  std::string name() const override { return name_; }
  load_spec loading() const override { return spec_; }
  scale_decision decide(const load_view& v) override;

 protected:
  // Requests wait and the queue, smoothed TTFT or TBT, or KV-cache use is past its limit.
  bool under_pressure(const load_view& v) const;

  std::string name_;
  load_spec spec_;
  scaling_knobs knobs_;
  double last_out_ = -1e9;
};

// HAS-GPU's predictor for vertical scaling, on the model that time per token is inversely
// proportional to the compute share at a fixed batch: the share at which `tbt_s` (measured at
// `share`) becomes half of `slo_s` (headroom for the bursts a tick does not see yet), rounded up
// to a multiple of `step` (the partition granularity), within [step, 1]. Without a measurement
// (tbt_s or slo_s <= 0): `share`, rounded.
double predict_share(double share, double tbt_s, double slo_s, double step);

// HAS-GPU (vertical before horizontal): the first instances start with knobs.min_share of a
// device (loaded like blitz, from running instances). Under pressure the serving instances grow
// first: to predict_share (at least a step more) when time per token is over its SLO, to a whole
// device when requests queue; an instance is added only once every serving one is whole (or the
// KV caches are full), and then whole itself, since the load it is for is already there. Scaling in is vertical first too: an instance shrinks, at most by half per
// keep-alive, to the predicted share when its tokens are faster than they need to be, by half
// when idle, and is removed only after a keep-alive at min_share.
class has_gpu_policy : public threshold_policy {
 public:
  has_gpu_policy(std::string name, load_spec spec, scaling_knobs knobs);
  scale_decision decide(const load_view& v) override;
  double initial_share() const override { return next_share_; }

 private:
  std::map<uint32_t, double> last_resize_;  // per instance: when it was last resized
  double next_share_;                       // of the instances the last decision added
};

struct link_speeds {
  double network_gb_s = 12.5;   // GB/s between instances (compute network, e.g. 100 Gb/s)
  double local_host_gb_s = 25;  // GB/s host memory to device on the same node (PCIe)
  double remote_gb_s = 2.0;     // GB/s of the cold path: a remote host copy or SSD
};

// The policy registry: name -> factory. Built in: blitz, lambda-pipe, stop-the-world (remote
// host copy), all-cache (host copy on every node), has-gpu (blitz loading, vertical before
// horizontal scaling). An app file registers its own before it parses options; `strata
// policies` lists them.
struct policy_entry {
  std::string name;
  std::string description;
  std::function<std::unique_ptr<scaling_policy>(const scaling_knobs&, const link_speeds&)> make;
};

// Adds a policy; an empty or taken name is an error.
status register_policy(policy_entry e);
// Every registered policy, built-ins first, then in registration order.
std::vector<policy_entry> scaling_policies();

expected<std::unique_ptr<scaling_policy>> make_policy(const std::string& name, const scaling_knobs& k,
                                                      const link_speeds& l);

}  // namespace strata
