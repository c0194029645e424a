#include "dataflow/cluster/cluster_book.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "dataflow/model/manifest.hpp"
#include "dataflow/model/param_image.hpp"

namespace strata {

namespace {
double seconds(cluster_book::clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

expected<node_id> cluster_book::join(node_info info, time_point now, bool same_process) {
  if (named(info.name)) return make_error(errc::bad_request, "a node named '" + info.name + "' is already in the cluster");
  info.id = next_id_++;
  nodes_[info.id] = member{info, now, false, same_process};
  return info.id;
}

std::optional<node_id> cluster_book::named(const std::string& name) const {
  for (auto& [id, m] : nodes_)
    if (m.info.name == name) return id;
  return std::nullopt;
}

const node_info* cluster_book::find(node_id n) const {
  auto it = nodes_.find(n);
  return it == nodes_.end() ? nullptr : &it->second.info;
}

std::string cluster_book::name_of(node_id n) const {
  auto* i = find(n);
  return i ? i->name : "n" + std::to_string(n);
}

bool cluster_book::heartbeat(node_id n, time_point now) {
  auto it = nodes_.find(n);
  if (it == nodes_.end()) return false;
  it->second.last_seen = now;
  return true;
}

std::chrono::milliseconds cluster_book::check_interval() const {
  return std::chrono::milliseconds(std::max(10, opt_.heartbeat_timeout_ms / 4));
}

cluster_book::health cluster_book::check(time_point now) {
  health h;
  const double interval_s = double(check_interval().count()) / 1000.0;
  const double late = seconds(now - last_check_);
  last_check_ = now;
  if (late > 2 * interval_s + opt_.heartbeat_timeout_ms / 2000.0) {
    h.stalled_s = late;
    for (auto& [_, m] : nodes_) m.last_seen = now;
    return h;
  }
  for (auto& [id, m] : nodes_)
    if (!m.same_process && seconds(now - m.last_seen) * 1000 > opt_.heartbeat_timeout_ms)
      h.dead.emplace_back(id, "no heartbeat for " + std::to_string(opt_.heartbeat_timeout_ms) + " ms");
  return h;
}

std::string cluster_book::lose(node_id n) {
  auto it = nodes_.find(n);
  if (it == nodes_.end()) return {};
  std::string name = it->second.info.name;
  nodes_.erase(it);
  for (auto& [_, m] : models_) {
    m.host_copies.erase(n);
    m.instances.erase(n);
    m.partial.erase(n);
  }
  return name;
}

status cluster_book::drain(node_id n) {
  auto it = nodes_.find(n);
  if (it == nodes_.end()) return make_error(errc::bad_request, "no node " + name_of(n) + " in the cluster");
  if (nodes_.size() > 1)
    for (auto& [model, m] : models_)
      if (m.host_copies.size() == 1 && m.host_copies.count(n))
        return make_error(errc::bad_request, "node '" + it->second.info.name + "' holds the only host copy of " + model +
                                                 " (offer it on another node first: strata node --model " + model +
                                                 "=PATH)");
  it->second.draining = true;
  return {};
}

bool cluster_book::draining(node_id n) const {
  auto it = nodes_.find(n);
  return it != nodes_.end() && it->second.draining;
}

bool cluster_book::hold(node_id n, const std::string& model, const std::vector<uint8_t>& manifest) {
  if (!nodes_.count(n)) return false;  // not (or no longer) in the cluster view
  if (nodes_.at(n).draining && !models_[model].host_copies.count(n)) return false;  // it is leaving
  auto& m = models_[model];
  if (m.manifest.empty()) {
    m.manifest = manifest;
    if (auto v = read_manifest(manifest.data(), manifest.size())) m.image_bytes = layout_of(v->config).total;
  }
  if (m.manifest != manifest) return false;  // a different model under the same name
  if (m.host_copies.count(n)) return true;
  if (int(m.host_copies.size()) >= opt_.host_copies) return false;
  m.host_copies.insert(n);
  return true;
}

void cluster_book::unhold(node_id n, const std::string& model) {
  auto m = models_.find(model);
  if (m == models_.end()) return;
  m->second.instances.erase(n);
  m->second.host_copies.erase(n);
}

void cluster_book::loading(const std::string& model, node_id n) {
  if (nodes_.count(n)) models_[model].partial[n];
}

void cluster_book::segment_ready(const std::string& model, node_id n, int32_t segment) {
  if (nodes_.count(n)) models_[model].partial[n].insert(segment);
}

void cluster_book::loaded(const std::string& model, node_id n) {
  if (!nodes_.count(n)) return;  // lost meanwhile: no holding
  auto& m = models_[model];
  m.instances.insert(n);
  m.partial.erase(n);
}

void cluster_book::load_failed(const std::string& model, node_id n) {
  if (auto m = models_.find(model); m != models_.end()) m->second.partial.erase(n);
}

const std::vector<uint8_t>* cluster_book::manifest(const std::string& model) const {
  auto m = models_.find(model);
  return m == models_.end() ? nullptr : &m->second.manifest;
}

expected<std::vector<node_id>> cluster_book::targets(
    const multicast_request& req, const std::function<std::optional<uint64_t>(node_id)>& receiving) const {
  auto mit = models_.find(req.model);
  if (mit == models_.end()) return make_error(errc::bad_request, "no node holds model " + req.model);
  const auto& me = mit->second;
  std::vector<node_id> out;
  for (auto& name : req.targets) {
    auto id = named(name);
    if (!id) return make_error(errc::bad_request, "unknown target node '" + name + "'");
    if (std::find(out.begin(), out.end(), *id) != out.end())
      return make_error(errc::bad_request, "target node '" + name + "' named twice");
    // A target that holds the model, or is receiving it, would get every byte again.
    if (draining(*id)) return make_error(errc::bad_request, "node '" + name + "' is draining (leaving the cluster)");
    if (!req.resend && (me.host_copies.count(*id) || me.instances.count(*id)))
      return make_error(errc::bad_request, "node '" + name + "' already holds " + req.model);
    if (auto tid = receiving ? receiving(*id) : std::nullopt)
      return make_error(errc::bad_request, "node '" + name + "' is already receiving " + req.model + " (transfer " +
                                               std::to_string(*tid) + ")");
    out.push_back(*id);
  }
  return out;
}

expected<std::vector<source_info>> cluster_book::sources(const multicast_request& req,
                                                         const std::vector<node_id>& targets) const {
  for (auto& name : req.busy)
    if (!named(name)) return make_error(errc::bad_request, "busy: unknown node '" + name + "'");
  auto mit = models_.find(req.model);
  if (mit == models_.end()) return make_error(errc::bad_request, "no node holds model " + req.model);
  std::set<node_id> holders(mit->second.host_copies);
  holders.insert(mit->second.instances.begin(), mit->second.instances.end());
  std::vector<source_info> out;
  for (auto h : holders) {
    // A holder the view no longer lists (dropped, then heard from late) is no source.
    if (!nodes_.count(h) || std::find(targets.begin(), targets.end(), h) != targets.end()) continue;
    bool busy = std::find(req.busy.begin(), req.busy.end(), name_of(h)) != req.busy.end();
    out.push_back({h, busy});
  }
  if (out.empty()) return make_error(errc::unavailable, "no live holder of " + req.model);
  return out;
}

cluster_view cluster_book::view() const {
  cluster_view v;
  for (auto& [id, m] : nodes_) {
    v.nodes.push_back(m.info);
    auto& n = v.nodes.back();
    n.models.clear();
    n.used_bytes = 0;
    for (auto& [name, me] : models_)
      if (me.host_copies.count(id) || me.instances.count(id) || me.partial.count(id)) {
        n.models.push_back(name);
        n.used_bytes += me.image_bytes;
      }
    if (m.draining) v.draining.push_back(m.info.name);
  }
  for (auto& [name, m] : models_) {
    std::string line = name + ":";
    for (auto n : m.host_copies) line += " " + name_of(n) + " (host copy)";
    for (auto n : m.instances) line += " " + name_of(n);
    for (auto& [n, segs] : m.partial) {
      std::string list;
      for (auto sgm : segs) list += (list.empty() ? "" : ",") + std::to_string(sgm);
      line += " " + name_of(n) + " (loading; segments ready: " + (list.empty() ? "none" : list) + ")";
    }
    v.holdings.push_back(line);
  }
  return v;
}


std::vector<std::string> nodes_with_room(const cluster_view& v, const std::string& model, uint64_t need_bytes,
                                         const std::vector<std::string>& candidates,
                                         const std::set<std::string>& skip, int n, std::string& why) {
  std::vector<std::string> out, short_of;
  const double gib = double(1ull << 30);
  for (auto& node : candidates) {
    if (int(out.size()) >= n || skip.count(node)) continue;
    if (std::find(v.draining.begin(), v.draining.end(), node) != v.draining.end()) continue;
    auto it = std::find_if(v.nodes.begin(), v.nodes.end(), [&](const node_info& i) { return i.name == node; });
    if (it == v.nodes.end() && !v.nodes.empty()) continue;  // it left (drained) or was dropped
    if (it != v.nodes.end() && std::find(it->models.begin(), it->models.end(), model) == it->models.end() &&
        it->used_bytes + need_bytes > it->memory_bytes) {
      char b[200];
      std::snprintf(b, sizeof b, "%s has %.3g of %.3g GiB free (%zu model(s) there), %.3g GiB needed", node.c_str(),
                    double(it->memory_bytes - std::min(it->memory_bytes, it->used_bytes)) / gib,
                    double(it->memory_bytes) / gib, it->models.size(), double(need_bytes) / gib);
      short_of.push_back(b);
      continue;
    }
    out.push_back(node);
  }
  if (int(out.size()) < n) {
    why = "every node hosts an instance already, drains, left or is short of memory";
    for (auto& s : short_of) why += "; " + s;
  }
  return out;
}

std::string transfer_report::summary() const {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line,
                "transfer %llu of %s: %.1f MiB to %zu target(s) in %.3f s (%.3f s preparing targets, then streaming)\n",
                (unsigned long long)id, model.c_str(), double(image_bytes) / (1 << 20), targets.size(), seconds,
                setup_seconds);
  os << line << plan_text;
  std::snprintf(line, sizeof line, "  %-14s %-6s %10s %12s %12s %9s  %s\n", "target", "ok", "seconds", "MiB/s",
                "1st layer s", "refetch", "error");
  os << line;
  for (auto& t : targets) {
    std::snprintf(line, sizeof line, "  %-14s %-6s %10.3f %12.1f %12.3f %9u  %s\n", t.node.c_str(),
                  t.ok ? "yes" : "NO", t.seconds, t.seconds > 0 ? double(t.bytes) / (1 << 20) / t.seconds : 0.0,
                  t.first_layer_s, t.refetched, t.error.c_str());
    os << line;
  }
  for (auto& e : events) os << "  event: " << e << "\n";
  return os.str();
}

}  // namespace strata
