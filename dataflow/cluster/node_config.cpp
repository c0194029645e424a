#include "dataflow/cluster/node_config.hpp"

#include "dataflow/files.hpp"
#include "dataflow/serving/route.hpp"

#include <sstream>
#include <toml++/toml.h>

namespace strata {

expected<std::pair<std::string, uint16_t>> split_host_port(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return make_error("'" + s + "' is not host:port");
  char* end = nullptr;
  long port = std::strtol(s.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port < 0 || port > 65535 || colon + 1 == s.size())
    return make_error("'" + s + "' has a bad port");
  return std::make_pair(s.substr(0, colon), uint16_t(port));
}

expected<node_config> parse_node_config(const std::string& text, const std::string& origin) {
  toml::table t;
  try {
    t = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << origin << ":" << e.source().begin.line << ": " << e.description();
    return make_error(os.str());
  }
  node_config c;
  static const char* known[] = {"name", "listen", "controller", "memory_gb", "transport", "heartbeat_ms",
                                "heartbeat_timeout_ms", "host_copies", "transfer_timeout_ms", "models",
                                "port_file", "corrupt_chunks", "drop_chunks", "stall_ms", "throttle_mb_s", "device",
                                "model_roots", "tls"};
  for (auto& [k, v] : t) {
    bool ok = false;
    for (auto* n : known) ok = ok || k.str() == n;
    if (!ok) return make_error(origin + ": unknown key '" + std::string(k.str()) + "'");
  }
  auto str = [&](const char* key, std::string& out) -> status {
    if (auto n = t.get(key)) {
      if (!n->is_string()) return make_error(origin + ": '" + key + "' must be a string");
      out = n->as_string()->get();
    }
    return {};
  };
  auto num = [&](const char* key, auto& out, double lo, double hi) -> status {
    if (auto n = t.get(key)) {
      if (!n->is_number()) return make_error(origin + ": '" + key + "' must be a number");
      double v = n->is_integer() ? double(n->as_integer()->get()) : n->as_floating_point()->get();
      if (v < lo || v > hi)
        return make_error(origin + ": '" + key + "' = " + std::to_string(v) + " is outside [" + std::to_string(lo) +
                          ", " + std::to_string(hi) + "]");
      out = static_cast<std::remove_reference_t<decltype(out)>>(v);
    }
    return {};
  };
  status st;
  if (!(st = str("name", c.name)) || !(st = str("listen", c.listen)) || !(st = str("controller", c.controller)) ||
      !(st = str("transport", c.transport)) || !(st = str("port_file", c.port_file)) || !(st = str("tls", c.tls)) ||
      !(st = num("memory_gb", c.memory_gb, 0, 1 << 20)) || !(st = num("heartbeat_ms", c.heartbeat_ms, 10, 60000)) ||
      !(st = num("heartbeat_timeout_ms", c.heartbeat_timeout_ms, 50, 600000)) ||
      !(st = num("host_copies", c.host_copies, 1, 1000)) ||
      !(st = num("transfer_timeout_ms", c.transfer_timeout_ms, 100, 86400000)) ||
      !(st = num("throttle_mb_s", c.throttle_mb_s, 0, 1e9)) || !(st = num("stall_ms", c.stall_ms, 10, 600000)))
    return st.err();
  std::string device = "cpu";
  if (!(st = str("device", device))) return st.err();
  auto dev = parse_devices(device, 1);
  if (!dev) return make_error(origin + ": 'device': " + dev.message());
  c.cuda_device = dev->front();
  if (c.transport != "tcp" && c.transport != "sm" && c.transport != "auto")
    return make_error(origin + ": transport must be tcp, sm or auto, got '" + c.transport + "'");
  for (auto [key, out] : {std::pair<const char*, std::vector<int>*>{"corrupt_chunks", &c.corrupt_chunks},
                           {"drop_chunks", &c.drop_chunks}})
    if (auto n = t.get(key)) {
      if (!n->is_array()) return make_error(origin + ": '" + key + "' must be an array of integers");
      for (auto& e : *n->as_array()) {
        if (!e.is_integer()) return make_error(origin + ": '" + key + "' must be an array of integers");
        out->push_back(int(e.as_integer()->get()));
      }
    }
  if (auto n = t.get("model_roots")) {
    if (!n->is_array()) return make_error(origin + ": 'model_roots' must be an array of directory paths");
    for (auto& e : *n->as_array()) {
      if (!e.is_string() || e.as_string()->get().empty())
        return make_error(origin + ": 'model_roots' must be an array of directory paths");
      c.model_roots.push_back(e.as_string()->get());
    }
  }
  if (auto n = t.get("models")) {
    if (!n->is_array_of_tables()) return make_error(origin + ": 'models' must be an array of tables ([[models]])");
    for (auto& e : *n->as_array()) {
      auto& m = *e.as_table();
      auto name = m["name"].value<std::string>();
      auto path = m["path"].value<std::string>();
      if (!name || !path) return make_error(origin + ": every [[models]] entry needs name and path strings");
      c.models.push_back({*name, *path});
    }
  }
  if (!c.controller.empty())
    if (auto hp = split_host_port(c.controller); !hp) return make_error(origin + ": controller: " + hp.message());
  if (auto hp = split_host_port(c.listen); !hp) return make_error(origin + ": listen: " + hp.message());
  return c;
}

expected<node_config> load_node_config(const std::string& path) {
  auto text = read_file(path, 1 << 20, "node config");
  if (!text) return text.err();
  return parse_node_config(*text, path);
}

}  // namespace strata
