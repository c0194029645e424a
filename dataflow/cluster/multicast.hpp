// Multicast plans for "parameters of model M to targets T1..Tn": plain data, printable and
// testable, executed by loader actors. Every plan is a set of forwarding trees; a node forwards
// each chunk to its children the moment it has landed, so transfers pipeline chunk by chunk.
//   one_to_one  every target fetches from the source directly (the baseline)
//   chain       source -> t1 -> t2 -> ... (BlitzScale's serial forwarding chain)
//   binomial    binomial tree: holders double every round (λScale)
//   kary        k-ary tree with fan-out k (λScale's k-way pipeline)
//   block       λScale-style block pipeline: the chunks are cut into one block per target and
//               block i travels a chain that starts at target i, so every target gets a
//               different part of the model first (complementary blocks for execute-while-load)
//               while the source still sends each byte once
//   binomial_pipeline  λScale's binomial pipeline: blocks as in `block`, but block i spreads
//               from target i over a binomial tree of the targets (rotated per block), so a
//               block reaches all N targets in 1 + ceil(log2 N) hops instead of N, and the
//               forwarding work is spread over the targets
// Several sources split the chunks between them, one tree each; busy sources are left out.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

using node_id = uint32_t;

// Multicast plan shapes, a registry (dataflow/registry.hpp) like scaling policies: how the
// targets hang off a source and how its chunks split among trees. Built in: one-to-one, chain,
// binomial, kary, block and binomial-pipeline; an app file may register its own before it plans.
struct plan_shape {
  std::string name;
  std::string description;
  std::vector<std::string> aliases;  // other names it answers to
  // The parent of rank `rank` (>= 1) in a tree over ranks 0 (its root) .. n-1.
  std::function<size_t(size_t rank, int fanout)> parent;
  // whole: one tree over every target carries all of a source's chunks. per_target: one block of
  // them per target, entering at that target: from_source: the tree is over the source and the
  // targets rotated to start there (block); from_target: over the rotated targets, fed by the
  // source through its first (binomial-pipeline).
  enum class split { whole, from_source, from_target } blocks = split::whole;
  bool uses_fanout = false;  // plan_request::fanout must then be >= 1
};
status register_plan_shape(plan_shape s);
std::vector<plan_shape> plan_shapes();
// By name or alias; an error lists the registered names.
expected<plan_shape> find_plan_shape(const std::string& name);

// The built-in shapes' names, for code that picks one.
namespace plan_kind {
inline const std::string one_to_one = "one-to-one", chain = "chain", binomial = "binomial", kary = "kary",
                         block = "block", binomial_pipeline = "binomial-pipeline";
}
// The registered name `s` stands for (an alias resolves to its shape's name).
expected<std::string> parse_plan_kind(const std::string& s);

struct source_info {
  node_id node = 0;
  bool busy = false;  // serving hot traffic: use only if nothing else holds the parameters
};

struct forward_tree {
  node_id root = 0;
  std::vector<uint32_t> chunks;                      // in sending order
  std::map<node_id, std::vector<node_id>> children;  // root and relays
  std::map<node_id, node_id> parent;                 // every target
  std::vector<node_id> children_of(node_id n) const;
};

struct multicast_plan {
  std::string kind = plan_kind::chain;  // a registered plan shape
  std::vector<node_id> sources;  // every holder that may serve (also spares for repair)
  std::vector<node_id> targets;
  std::vector<forward_tree> trees;
  // `name` renders a node (default: "n<id>").
  std::string describe(const std::function<std::string(node_id)>& name = {}) const;
};

struct plan_request {
  std::string kind = plan_kind::chain;  // a registered plan shape
  std::vector<source_info> sources;
  std::vector<node_id> targets;
  uint32_t n_chunks = 0;
  int fanout = 2;  // kary only
  int max_sources = 0;  // 0: split among every usable source
};

expected<multicast_plan> plan_multicast(const plan_request& r);

// After `failed` died: each tree drops it and its parent (or, for a dead root, another source)
// adopts its children. The executor sends every adopted child the chunks it still lacks.
struct adoption {
  size_t tree = 0;
  node_id parent = 0;
  node_id child = 0;
};
expected<std::vector<adoption>> repair_plan(multicast_plan& p, node_id failed);

}  // namespace strata
