#include "dataflow/cluster/multicast.hpp"

#include <algorithm>
#include <set>
#include <sstream>

namespace strata {

const char* to_string(plan_kind k) {
  switch (k) {
    case plan_kind::one_to_one: return "one-to-one";
    case plan_kind::chain: return "chain";
    case plan_kind::binomial: return "binomial";
    case plan_kind::kary: return "kary";
    case plan_kind::block: return "block";
    case plan_kind::binomial_pipeline: return "binomial-pipeline";
  }
  return "?";
}

expected<plan_kind> parse_plan_kind(const std::string& s) {
  if (s == "one-to-one" || s == "one_to_one" || s == "direct") return plan_kind::one_to_one;
  if (s == "chain") return plan_kind::chain;
  if (s == "binomial") return plan_kind::binomial;
  if (s == "kary" || s == "k-ary") return plan_kind::kary;
  if (s == "block" || s == "block-pipeline") return plan_kind::block;
  if (s == "binomial-pipeline" || s == "binomial_pipeline") return plan_kind::binomial_pipeline;
  return make_error("unknown plan '" + s +
                    "' (expected one-to-one, chain, binomial, kary, block or binomial-pipeline)");
}

std::vector<node_id> forward_tree::children_of(node_id n) const {
  auto it = children.find(n);
  return it == children.end() ? std::vector<node_id>{} : it->second;
}

namespace {

// Builds the tree over root + order (order[i] is the node of rank i + 1).
forward_tree build_tree(plan_kind kind, node_id root, const std::vector<node_id>& order, int fanout) {
  forward_tree t;
  t.root = root;
  auto node_at = [&](size_t rank) { return rank == 0 ? root : order[rank - 1]; };
  size_t n = order.size() + 1;
  for (size_t rank = 1; rank < n; ++rank) {
    size_t parent = 0;
    switch (kind) {
      case plan_kind::one_to_one: parent = 0; break;
      case plan_kind::chain:
      case plan_kind::block: parent = rank - 1; break;
      case plan_kind::binomial:
      case plan_kind::binomial_pipeline: {
        size_t hi = 1;
        while (hi * 2 <= rank) hi *= 2;
        parent = rank - hi;  // rank joins in the round of its highest bit
        break;
      }
      case plan_kind::kary: parent = (rank - 1) / size_t(std::max(1, fanout)); break;
    }
    t.parent[node_at(rank)] = node_at(parent);
    t.children[node_at(parent)].push_back(node_at(rank));
  }
  return t;
}

void print_subtree(std::ostringstream& os, const forward_tree& t, node_id n, int depth,
                   const std::function<std::string(node_id)>& name) {
  for (auto c : t.children_of(n)) {
    os << std::string(size_t(4 + 2 * depth), ' ') << name(n) << " -> " << name(c) << "\n";
    print_subtree(os, t, c, depth + 1, name);
  }
}

}  // namespace

expected<multicast_plan> plan_multicast(const plan_request& r) {
  if (r.targets.empty()) return make_error("multicast plan needs at least one target");
  if (r.n_chunks == 0) return make_error("multicast plan needs at least one chunk");
  if (r.kind == plan_kind::kary && r.fanout < 1) return make_error("kary plan needs fanout >= 1");
  std::set<node_id> tset(r.targets.begin(), r.targets.end());
  if (tset.size() != r.targets.size()) return make_error("a target is listed twice");
  std::vector<node_id> usable, busy;
  for (auto& s : r.sources) {
    if (tset.count(s.node)) return make_error("node " + std::to_string(s.node) + " is both source and target");
    (s.busy ? busy : usable).push_back(s.node);
  }
  if (usable.empty()) usable = busy;  // only busy holders left: better slow than never
  if (usable.empty()) return make_error("no source holds the parameters");
  if (r.max_sources > 0 && int(usable.size()) > r.max_sources) usable.resize(size_t(r.max_sources));
  size_t k = std::min<size_t>(usable.size(), r.n_chunks);

  multicast_plan p;
  p.kind = r.kind;
  for (auto& s : r.sources) p.sources.push_back(s.node);
  p.targets = r.targets;
  for (size_t i = 0; i < k; ++i) {
    // Contiguous share of the chunks; rotate the targets so trees use different relays.
    uint32_t b = uint32_t(size_t(r.n_chunks) * i / k), e = uint32_t(size_t(r.n_chunks) * (i + 1) / k);
    std::vector<node_id> order = r.targets;
    std::rotate(order.begin(), order.begin() + long(i * order.size() / k), order.end());
    bool blocks = r.kind == plan_kind::block || r.kind == plan_kind::binomial_pipeline;
    if (!blocks) {
      auto t = build_tree(r.kind, usable[i], order, r.fanout);
      for (uint32_t c = b; c < e; ++c) t.chunks.push_back(c);
      p.trees.push_back(std::move(t));
      continue;
    }
    // One block per target: block j enters at the j-th target, which passes it on along a
    // chain (block) or a binomial tree of the targets (binomial_pipeline).
    size_t n = std::min<size_t>(order.size(), e - b);
    for (size_t j = 0; j < n; ++j) {
      std::vector<node_id> rot = order;
      std::rotate(rot.begin(), rot.begin() + long(j), rot.end());
      forward_tree t;
      if (r.kind == plan_kind::block) {
        t = build_tree(r.kind, usable[i], rot, r.fanout);
      } else {
        t = build_tree(r.kind, rot[0], std::vector<node_id>(rot.begin() + 1, rot.end()), r.fanout);
        t.root = usable[i];
        t.parent[rot[0]] = usable[i];
        t.children[usable[i]] = {rot[0]};
      }
      uint32_t bb = b + uint32_t(size_t(e - b) * j / n), be = b + uint32_t(size_t(e - b) * (j + 1) / n);
      for (uint32_t c = bb; c < be; ++c) t.chunks.push_back(c);
      p.trees.push_back(std::move(t));
    }
  }
  return p;
}

expected<std::vector<adoption>> repair_plan(multicast_plan& p, node_id failed) {
  std::vector<adoption> out;
  std::erase(p.targets, failed);
  std::erase(p.sources, failed);
  for (size_t ti = 0; ti < p.trees.size(); ++ti) {
    auto& t = p.trees[ti];
    node_id new_parent;
    if (t.root == failed) {
      // Another source takes the root's place (prefer one not rooting a tree already).
      std::vector<node_id> candidates;
      for (auto s : p.sources) {
        bool roots = false;
        for (auto& o : p.trees) roots = roots || o.root == s;
        if (!roots) candidates.insert(candidates.begin(), s);
        else candidates.push_back(s);
      }
      if (candidates.empty())
        return make_error("source n" + std::to_string(failed) + " failed and no other node holds chunks " +
                          std::to_string(t.chunks.front()) + ".." + std::to_string(t.chunks.back()));
      new_parent = candidates.front();
      t.root = new_parent;
    } else {
      auto pit = t.parent.find(failed);
      if (pit == t.parent.end()) continue;
      new_parent = pit->second;
      t.parent.erase(pit);
      std::erase(t.children[new_parent], failed);
    }
    for (auto c : t.children_of(failed)) {
      t.parent[c] = new_parent;
      t.children[new_parent].push_back(c);
      out.push_back({ti, new_parent, c});
    }
    t.children.erase(failed);
    if (t.children.count(new_parent) && t.children[new_parent].empty()) t.children.erase(new_parent);
  }
  return out;
}

std::string multicast_plan::describe(const std::function<std::string(node_id)>& name_of) const {
  auto name = name_of ? name_of : [](node_id n) { return "n" + std::to_string(n); };
  std::ostringstream os;
  os << to_string(kind) << " plan: " << trees.size() << " tree(s) to " << targets.size() << " target(s)\n";
  for (size_t i = 0; i < trees.size(); ++i) {
    auto& t = trees[i];
    os << "  tree " << i << ": root " << name(t.root) << ", chunks " << t.chunks.front() << ".." << t.chunks.back() << " ("
       << t.chunks.size() << ")\n";
    print_subtree(os, t, t.root, 0, name);
  }
  return os.str();
}

}  // namespace strata
