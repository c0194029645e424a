// The scaler actor: watches a model's router, asks its policy how many instances to run, starts
// instances whose parameters stream in layer by layer and rewrites the router's routes as layers
// land, so a live policy serves from a new instance at once (cooperative execution), and drains
// instances it removes. An instance is a head, one shard actor (its device) and a tail; an
// instance_provider (actors/instance_provider.hpp) places and starts them, either
// - in a cluster (scaler_options::cluster): hosted by node processes, parameters multicast over
//   UCX from the nodes that hold them, activations crossing processes between route hops; or
// - in this process: parameters arrive after the time an emulated link takes (research on a
//   single machine with a GPU-sized profile).
// Device time may follow an emulated profile either way, while the math is the real model's.
#pragma once

#include <caf/all.hpp>
#include <map>

#include "actors/messages.hpp"
#include "actors/stages.hpp"
#include "dataflow/cluster/cluster_book.hpp"
#include "dataflow/scaling/scaling.hpp"

namespace strata {

// Where a cluster-mode scaler puts instances.
struct cluster_placement {
  caf::actor controller;           // set: cluster mode
  std::string model;               // the model's name in the cluster
  std::vector<std::string> nodes;  // nodes that may host an instance (one each), preferred first
  bool follow_view = false;        // members that join later are added to `nodes` (no placement given)
  uint64_t chunk_bytes = 64 << 10;
  std::string plan;                // multicast plan; empty: see multicast_to()
  // all-cache: MB/s from a node's own host copy to its instance (0: at once). The nodes must
  // hold host copies (cache_atom) for such a policy.
  double local_mb_s = 0;
};

struct scaler_options {
  double layer_bytes = 0;    // emulated parameter bytes per layer (0: the model's real size)
  double globals_bytes = 0;  // emulated embedding + classifier bytes (0: real size)
  device_model device;       // emulated compute of every instance
  int cuda_device = -1;      // >= 0: in-process instances run their layers on this CUDA device
  bool proportional_share = true;  // a loading instance takes requests in proportion to its layers
  // A loading instance offers one cooperative route per full partner, for the router's zigzag
  // scheduler to choose from (false: one route, partners spread by instance id).
  bool split_candidates = true;
  std::chrono::milliseconds tick{50};        // load checks while requests run or instances change
  std::chrono::milliseconds idle_tick{1000};  // ... while nothing does (an arrival wakes the scaler)
  // Cluster mode: the controller is asked for its view this often; no answer within
  // controller_timeout means it hangs (a dead one is noticed at once by a monitor).
  std::chrono::milliseconds controller_ping{1000};
  std::chrono::milliseconds controller_timeout{4000};
  cluster_placement cluster;
  // Non-empty: every scaling event is also written to stderr as "strata scaler LABEL: ..." (the
  // front door's log for operators).
  std::string log_label;
  // A long-running scaler (a front door's) keeps this many recent events in its report; counts
  // of every event are kept regardless. 0: all (experiments, which end).
  size_t max_events = 0;
};

struct scaling_event {
  double t = 0;          // seconds since the scaler started
  std::string what;      // "started" (whole), "scale-out", "first layer", "full", "resize", "drain", "stopped"
  uint32_t instance = 0;
  std::string detail;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, scaling_event& x) {
  return f(caf::meta::type_name("scaling_event"), x.t, x.what, x.instance, x.detail);
}

struct scaling_report {
  std::string policy;
  std::vector<scaling_event> events;  // the latest scaler_options::max_events (all when 0)
  std::map<std::string, uint64_t> event_counts;  // every event since the start, by what
  // Cluster mode: per node, this model's instances now and what landed there; and the cluster as
  // the controller last listed it (memory, what each node holds, who drains).
  struct node_load {
    int instances = 0;
    uint64_t layers_loaded = 0;
    double bytes_loaded = 0;
  };
  std::map<std::string, node_load> by_node;
  cluster_view view;
  std::vector<std::pair<double, double>> instances;  // (t, instances started and not stopped)
  std::vector<double> to_first_layer_s;  // per new instance: decision -> first request served
  std::vector<double> to_full_s;         // decision -> every layer local
  double instance_seconds = 0;           // cost: integral of started instances over time
  double device_seconds = 0;             // cost in devices: integral of their compute shares
  uint64_t migrations = 0;               // requests moved off cooperative routes (router)
  uint64_t kv_migrations = 0;            // of those, moved with their KV cache
  uint64_t kv_bytes_moved = 0;
  uint64_t layers_loaded = 0;            // layer ready events of new instances (globals included)
  double bytes_loaded = 0;               // their parameter bytes (the emulated size in-process)
};

using report_atom = caf::atom_constant<caf::atom("report")>;
// (lready_atom, layer, next): a loader actor's own timer (actors/instance_provider.cpp).
using lready_atom = caf::atom_constant<caf::atom("lready")>;
using scaletick_atom = caf::atom_constant<caf::atom("scaletick")>;
// (evict_atom, std::string why): drain every instance now (the memory is wanted for another
// model: a front door's variant budget). Requests that arrive later start one again as usual.
using evict_atom = caf::atom_constant<caf::atom("evict")>;

// Spawns a scaler for `router` (which it feeds routes). Starts policy.min_instances full
// instances at once. (report_atom) -> scaling_report (local only).
caf::actor spawn_scaler(caf::actor_system& sys, model_ptr m, caf::actor router,
                        std::shared_ptr<scaling_policy> policy, scaling_knobs knobs, scaler_options opt);

}  // namespace strata

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(strata::scaling_report)
