// The cluster: node processes joined by CAF's middleman, a controller that keeps the cluster
// view (nodes, memory, which node holds which model), enforces O(1) host copies, and runs
// multicasts of parameters over UCX (plans from dataflow/cluster/multicast.hpp) with repair when a node
// dies. CAF carries control only; chunks travel on transport/ucx_endpoint.
#pragma once

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <memory>

#include "actors/messages.hpp"
#include "dataflow/cluster/cluster_book.hpp"
#include "dataflow/cluster/node_config.hpp"
#include "dataflow/cluster/transfer_plan.hpp"
#include "transport/ucx_endpoint.hpp"

namespace strata {

using join_atom = caf::atom_constant<caf::atom("join")>;
using heartbeat_atom = caf::atom_constant<caf::atom("heartbeat")>;
using hbcheck_atom = caf::atom_constant<caf::atom("hbcheck")>;
using view_atom = caf::atom_constant<caf::atom("view")>;
using hold_atom = caf::atom_constant<caf::atom("hold")>;
using multicast_atom = caf::atom_constant<caf::atom("multicast")>;
using transfer_atom = caf::atom_constant<caf::atom("transfer")>;
using chunk_atom = caf::atom_constant<caf::atom("chunk")>;
using chunks_atom = caf::atom_constant<caf::atom("chunks")>;
using refetch_atom = caf::atom_constant<caf::atom("refetch")>;
using adopt_atom = caf::atom_constant<caf::atom("adopt")>;
using missing_atom = caf::atom_constant<caf::atom("missing")>;
using tdone_atom = caf::atom_constant<caf::atom("tdone")>;
using tfail_atom = caf::atom_constant<caf::atom("tfail")>;
using ready_atom = caf::atom_constant<caf::atom("ready")>;
using imagesum_atom = caf::atom_constant<caf::atom("imagesum")>;
using ttimeout_atom = caf::atom_constant<caf::atom("ttimeout")>;
// (tabort_atom, transfer id, why): controller -> the nodes of a multicast that failed as a whole
// (timed out): they stop sending and drop what they received of it.
using tabort_atom = caf::atom_constant<caf::atom("tabort")>;
// (rejoin_atom): controller -> a node it dropped that is heard from again: start over and join.
using rejoin_atom = caf::atom_constant<caf::atom("rejoin")>;
// (reconnect_atom, why, attempts left): a node to itself, dialling a controller whose connection
// dropped; reconnect_attempts tries, reconnect_pause apart, before it counts the controller lost.
using reconnect_atom = caf::atom_constant<caf::atom("reconnect")>;
constexpr int reconnect_attempts = 10;
constexpr std::chrono::milliseconds reconnect_pause{500};
using pump_atom = caf::atom_constant<caf::atom("pump")>;
using stall_atom = caf::atom_constant<caf::atom("stall")>;
using instance_atom = caf::atom_constant<caf::atom("instance")>;
using uninstance_atom = caf::atom_constant<caf::atom("uninst")>;
using unhold_atom = caf::atom_constant<caf::atom("unhold")>;
using cache_atom = caf::atom_constant<caf::atom("cache")>;
using uncache_atom = caf::atom_constant<caf::atom("uncache")>;
using localfeed_atom = caf::atom_constant<caf::atom("localfeed")>;
using nodelost_atom = caf::atom_constant<caf::atom("nodelost")>;
// (drain_atom, node name) -> std::string to the controller (strata cluster drain): the node gets no
// new placement; the controller passes (drain_atom) on to it, and the node leaves (leave_atom, its
// id) once its last instance has stopped, then exits.
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using leave_atom = caf::atom_constant<caf::atom("leave")>;

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_info& x) {
  return f(caf::meta::type_name("node_info"), x.id, x.name, x.ucx_address, x.memory_bytes, x.transport, x.devices,
           x.control_address, x.models, x.used_bytes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, multicast_request& x) {
  return f(caf::meta::type_name("multicast_request"), x.model, x.targets, x.plan, x.chunk_bytes, x.fanout,
           x.max_sources, x.busy, x.segment_order, x.timeout_ms, x.resend);
}

// A chunk of a parameter image as a node describes it to the controller (chunks_atom).
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chunk_desc& x) {
  return f(caf::meta::type_name("chunk_desc"), x.index, x.segment, x.offset, x.length, x.checksum);
}

// One serving instance a node is asked to host (instance_atom): named fields, not a tuple.
struct instance_spec {
  std::string node;                // the node to host it (the controller relays to it)
  std::string model;
  std::vector<uint8_t> manifest;   // filled by the controller from the model's holders
  uint32_t id = 0;                 // the scaler's instance id
  double layer_s = 0;              // emulated device: time per layer and step
  double per_row_s = 0;            // ... and per row and layer
  double local_mb_s = 0;           // > 0: load from the node's own host copy at this rate (all-cache)
  caf::actor watcher;              // told (layerin_atom) as each layer lands
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instance_spec& x) {
  return f(caf::meta::type_name("instance_spec"), x.node, x.model, x.manifest, x.id, x.layer_s, x.per_row_s,
           x.local_mb_s, x.watcher);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, target_report& x) {
  return f(caf::meta::type_name("target_report"), x.node, x.ok, x.error, x.bytes, x.seconds, x.first_layer_s,
           x.refetched, x.ready_order);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, transfer_report& x) {
  return f(caf::meta::type_name("transfer_report"), x.id, x.model, x.plan_text, x.targets, x.events, x.seconds,
           x.setup_seconds, x.image_bytes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_view& x) {
  return f(caf::meta::type_name("cluster_view"), x.nodes, x.holdings, x.draining);
}

void register_cluster_types(caf::actor_system_config& cfg);

// Serving instances hosted by nodes (what a scaler drives across processes). To the controller:
//   (instance_atom, instance_spec: node, model, instance id, device layer_s and per_row_s, local_mb_s, watcher)
//     -> std::vector<caf::actor>{head, shard, tail}: a complete instance when the node holds the
//     model (and local_mb_s is 0); else head and tail are invalid and the shard receives each
//     layer as its parameters land, the node telling `watcher`
//     (layerin_atom, instance id, layer, actors): layer -1 (the globals) carries {head, tail}.
//     The parameters land from a multicast (multicast_atom to that node), or, when the node
//     holds the model and local_mb_s > 0, from its own host copy at that rate (the all-cache
//     baseline: host memory to device over PCIe).
//   (cache_atom, node, model, path) -> bool: the node loads the model from disk and offers it as
//     a host copy (kept when the controller's host_copies allows); (uncache_atom, node, model)
//     -> bool drops it again. The all-cache baseline puts a host copy on every node this way.
//   (uninstance_atom, node, instance id): stops it; the node drops its copy of the parameters
//     unless it is a host copy. A node monitors each watcher and stops its instances when it
//     goes away, so a scaler that ends (or dies with its process) leaves nothing behind.
//   The controller tells each watcher of a node's instances when it drops that node (connection
//   lost, or no heartbeat within heartbeat_timeout_ms: a hung node): (nodelost_atom, node, why).
// The controller actor: cluster view, host-copy policy, multicasts.
caf::actor spawn_controller(caf::actor_system& sys, const node_config& cfg);

// A node: joins `controller`, offers the models of its config, executes transfers. Owns the
// UCX endpoint of its process.
expected<caf::actor> spawn_node(caf::actor_system& sys, const node_config& cfg, caf::actor controller);

}  // namespace strata
