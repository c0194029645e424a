// Experiments as library code: a typed spec in, results as structs out. The CLI (`strata
// replay`, `strata autoscale`, `strata run FILE`) parses options into a spec and prints the
// results (or writes them as JSON); tests and other apps call the runners directly.
#pragma once

#include <csignal>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "actors/engine.hpp"
#include "actors/local_cluster.hpp"
#include "actors/replay.hpp"
#include "actors/router.hpp"
#include "actors/scaler.hpp"
#include "dataflow/experiment/metrics.hpp"
#include "dataflow/experiment/trace.hpp"

namespace strata {

// Scaling knobs, link and device profile, and the router's scheduling options of an autoscaled
// model (`autoscale`, `serve --policy`).
struct scaling_setup {
  scaling_knobs knobs;
  link_speeds links;
  scaler_options so;
  router_options ro;
};

// The cluster a scaler places instances on: node processes started on this machine (controller
// node "src" with the host copy of the model, n1..nN), or a running cluster reached at its
// controller (nodes started by operators anywhere).
struct cluster_spec {
  int nodes = 0;             // > 0: start src and n1..nN here
  std::string controller;    // or: HOST:PORT of a running cluster
  std::string tls_dir;       // attach: the cluster's certificates
  // The models, by their names in the cluster; started here, src holds a host copy of each (and
  // nodes may cache them from these paths); attached, some node must hold each.
  std::vector<model_source> models;
  double link_mbs = 0;       // started here: each node's paced egress (0: unpaced)
  std::string transport = "tcp";
  int host_copies = 0;       // started here: room for host copies per model (0: one per node)
  uint64_t chunk_bytes = 64 << 10;
  std::vector<std::string> placement;  // nodes that may host instances, in order (empty: all)
};

struct scaling_cluster {
  std::unique_ptr<local_cluster> cluster;
  std::vector<std::string> members;  // every node, src first when started here
  cluster_placement placement;       // what a scaler is given (scaler_options::cluster), for models[0]
  // ... for another of the models.
  cluster_placement placement_for(const std::string& model) const {
    auto p = placement;
    p.model = model;
    return p;
  }
};

// Starts (or attaches to) the cluster, waits for its members and for a host copy of every
// model, and checks the placement. `log` gets progress for people.
expected<scaling_cluster> start_scaling_cluster(const cluster_spec& spec,
                                                const std::function<void(const std::string&)>& log = {});

// The router's options where routes cross processes: a hop costs more than a mailbox, and a lost
// instance's requests may wait for the scaler's next one.
router_options cluster_router_options(router_options ro);

// A signal to one node process at a time into each policy's replay.
struct node_fault {
  std::string node;  // "src" (the controller's node) or "n1".."nN"
  double at_s = 0;
  int signal = SIGKILL;  // or SIGSTOP
};

struct autoscale_spec {
  std::string model_path;  // what node processes (and all-cache copies) load
  model_ptr model;
  trace requests;
  scaling_setup setup;
  std::vector<std::string> policies;  // registered scaling policies, run one after the other
  // cluster.nodes > 0: a cluster of node processes on this machine (controller node "src" with
  // the host copy of model_path, n1..nN; the runner names the model); 0: instances in this
  // process on the emulated profile.
  cluster_spec cluster;
  std::optional<node_fault> fault;
  replay_options replay;
};

// One policy's replay.
struct policy_run {
  std::string policy;
  std::string loads_from;  // where its new instances load from, for people
  bool live = false;       // serves while instances load
  std::vector<request_record> records;
  replay_summary summary;
  scaling_report report;
  router_stats router;
  double fault_at_s = -1;  // when the fault struck (-1: the replay ended first, or none)
};

struct autoscale_hooks {
  std::function<void(const std::string&)> log;        // progress for people (stderr)
  std::function<void(const policy_run&)> starting;    // a policy's replay begins (records empty)
  std::function<status(const policy_run&)> finished;  // ... ended; an error stops the experiment
};

struct autoscale_result {
  std::vector<policy_run> runs;
  std::string cluster_dir;  // the node processes' configs and logs (cluster mode)
};

// Checks the spec (nodes, fault, placement, policies) before anything starts, then replays the
// trace under each policy from the same starting state.
expected<autoscale_result> run_autoscale_experiment(const autoscale_spec& spec, const autoscale_hooks& hooks = {});

// A trace against one fixed pipeline (no scaling): `strata replay`.
struct replay_spec {
  model_ptr model;
  std::vector<layer_range> shards;  // empty: one shard of every layer
  trace requests;
  router_options ro;
  slo_spec slo;
  replay_options replay;
};

struct replay_result {
  std::vector<request_record> records;
  replay_summary summary;
  router_stats router;
};

expected<replay_result> run_replay_experiment(const replay_spec& spec);

// Results as JSON for scripts and tests: the summary, each request's record and (autoscale) each
// policy's scaling report. Times in seconds, as in the structs.
std::string results_json(const replay_result& r);
std::string results_json(const autoscale_result& r);

}  // namespace strata
