// The controller's view of its cluster as a plain object (sans-IO): members and their health,
// which node holds which model (host copies, full images, partial loads), the hold decision that
// keeps O(1) host copies, and the placement queries a multicast asks (valid targets, live
// sources). Losing a node is one event. actors/cluster.cpp's controller keeps the actor handles
// and transfers around it; tests and a simulator can drive it with their own clock.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dataflow/cluster/multicast.hpp"
#include "dataflow/expected.hpp"

namespace strata {

// A member as it joins (and as the view lists it).
struct node_info {
  uint32_t id = 0;
  std::string name;
  std::vector<uint8_t> ucx_address;
  uint64_t memory_bytes = 0;
  std::string transport;
  std::vector<std::string> devices;  // "cpu" now; CUDA devices later
  // host:port where this node's process accepts control-plane connections: the other members
  // connect there directly (control_plane's mesh), so their traffic does not ride the
  // controller's connection and outlives it. Empty: reached only through the controller.
  std::string control_address;
  // Filled by the view (not sent on join): the models this node holds or is loading, and their
  // parameter bytes (what its memory_bytes must cover; placement checks room against it).
  std::vector<std::string> models;
  uint64_t used_bytes = 0;
};

struct cluster_view {
  std::vector<node_info> nodes;
  std::vector<std::string> holdings;  // "model: node, node (host copy)"
  std::vector<std::string> draining;  // nodes told to leave: no new placement, no new host copy
};

// What a client asks of a multicast.
struct multicast_request {
  std::string model;
  std::vector<std::string> targets;     // node names
  std::string plan = "chain";           // one-to-one, chain, binomial, kary
  uint64_t chunk_bytes = 4 << 20;
  int32_t fanout = 2;
  int32_t max_sources = 0;              // 0: every holder
  std::vector<std::string> busy;        // holders to use only as a last resort
  std::vector<int32_t> segment_order;   // layers in the order wanted (0: globals, 1 + l: layer l)
  int64_t timeout_ms = 0;               // the transfer fails and is aborted after this (0: the controller's transfer_timeout_ms)
  bool resend = false;                  // send even to targets that hold the model already (benchmarks)
};

struct target_report {
  std::string node;
  bool ok = false;
  std::string error;
  uint64_t bytes = 0;
  double seconds = 0;         // sources start -> last chunk verified here
  double first_layer_s = 0;   // sources start -> first segment ready here
  uint32_t refetched = 0;     // chunks fetched again (checksum mismatch or lost)
  std::vector<int32_t> ready_order;  // segments in the order they became ready here
};

struct transfer_report {
  uint64_t id = 0;
  std::string model;
  std::string plan_text;
  std::vector<target_report> targets;
  std::vector<std::string> events;  // repairs and failures, in order
  double seconds = 0;        // request -> report
  double setup_seconds = 0;  // planning and preparing targets (host memory) before streaming
  uint64_t image_bytes = 0;
  std::string summary() const;
};

struct book_options {
  int heartbeat_timeout_ms = 2000;  // a node silent this long is dead
  int host_copies = 1;              // host copies kept per model
};

// Where new instances of `model` (parameter image `need_bytes`) may go: up to `n` of
// `candidates` in order, skipping `skip` (hosting one already, lost, ...), draining nodes and
// nodes without room for the image besides what they hold or load (a node holding the model
// needs none). Nodes the view does not list have left, unless the view is empty (none seen yet:
// taken as they are; the node checks again when the parameters come). `why` says what was short
// when fewer than n were found.
std::vector<std::string> nodes_with_room(const cluster_view& v, const std::string& model, uint64_t need_bytes,
                                         const std::vector<std::string>& candidates,
                                         const std::set<std::string>& skip, int n, std::string& why);

class cluster_book {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  cluster_book(book_options o, time_point now) : opt_(o), last_check_(now) {}

  // A node joins: its id, or bad_request when a member has that name (the same member joining
  // again is first lost by the caller: see named()). A node in the controller's own process
  // (`same_process`) is never judged by heartbeats: it dies with the controller, and its
  // heartbeats queue behind its own work (a multicast send, a forward pass) in the same actor
  // system, so a busy moment on two cores must not drop the cluster's host copy.
  expected<node_id> join(node_info info, time_point now, bool same_process = false);
  std::optional<node_id> named(const std::string& name) const;
  const node_info* find(node_id n) const;
  std::string name_of(node_id n) const;  // "n<id>" for a node not in the view
  // False when the node is not (or no longer) in the view.
  bool heartbeat(node_id n, time_point now);

  // The periodic health check, every check_interval(): the nodes silent past the timeout, with
  // the reason. A check that comes late means the controller itself was stalled (frozen,
  // swapped out): the silence is its own, so every node gets a fresh timeout instead.
  struct health {
    std::vector<std::pair<node_id, std::string>> dead;
    double stalled_s = 0;  // > 0: the check came this late; nobody was judged
  };
  health check(time_point now);
  std::chrono::milliseconds check_interval() const;

  // An operator tells a node to leave (strata cluster drain): it gets no multicast target and no
  // new host copy from now on, and scalers stop placing on it. Refused for a node that is not in
  // the view, or that holds the only host copy of a model while others are members (the cluster
  // would lose the model; a lone node may go).
  status drain(node_id n);
  bool draining(node_id n) const;

  // Losing a node, however it went: it leaves the view with everything it held. Its name, or
  // empty when it was not in the view.
  std::string lose(node_id n);

  // A node offers to keep `model` as a host copy: true while the cluster has fewer than
  // host_copies of it (or this node is one already). A different manifest under the same name
  // is refused, as is a node not in the view.
  bool hold(node_id n, const std::string& model, const std::vector<uint8_t>& manifest);
  void unhold(node_id n, const std::string& model);
  void loading(const std::string& model, node_id n);  // a multicast target made room: it is loading
  void segment_ready(const std::string& model, node_id n, int32_t segment);
  void loaded(const std::string& model, node_id n);       // the whole image landed
  void load_failed(const std::string& model, node_id n);  // a half-loaded image is no holding
  const std::vector<uint8_t>* manifest(const std::string& model) const;

  // Placement for a multicast of req.model: the targets (by name; refused: unknown, named
  // twice, already holding unless resend, or receiving it now: `receiving` names the transfer),
  // then the live holders that may serve, busy ones marked.
  expected<std::vector<node_id>> targets(const multicast_request& req,
                                         const std::function<std::optional<uint64_t>(node_id)>& receiving) const;
  expected<std::vector<source_info>> sources(const multicast_request& req, const std::vector<node_id>& targets) const;

  cluster_view view() const;

 private:
  struct member {
    node_info info;
    time_point last_seen;
    bool draining = false;
    bool same_process = false;
  };
  struct model_entry {
    std::vector<uint8_t> manifest;
    uint64_t image_bytes = 0;                     // its parameter image, from the manifest
    std::set<node_id> host_copies;                // at most host_copies
    std::set<node_id> instances;                  // nodes that received all parameters
    std::map<node_id, std::set<int32_t>> partial; // nodes loading: segments ready so far
  };

  book_options opt_;
  std::map<node_id, member> nodes_;
  std::map<std::string, model_entry> models_;
  node_id next_id_ = 1;
  time_point last_check_;
};

}  // namespace strata
