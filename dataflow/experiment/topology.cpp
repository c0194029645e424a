#include "dataflow/experiment/topology.hpp"

#include "dataflow/files.hpp"

#include <filesystem>
#include <sstream>
#include <toml++/toml.h>

namespace strata {

namespace {

namespace fs = std::filesystem;

enum class kind { text, path, integer, number, boolean, list };

struct key_spec {
  const char* section;  // "" for the top level
  const char* key;
  const char* option;   // the strata command's option (without --)
  kind k;
  const char* jobs;     // the jobs it applies to, space separated
};

// Every key a topology may hold: section, key, the option it sets, its type, the jobs it
// applies to. (Defaults are the commands' own; the README lists them.)
const key_spec keys[] = {
    {"model", "path", "model", kind::path, "autoscale replay serve"},
    {"model", "served_name", "served-model-name", kind::text, "serve"},
    {"cluster", "nodes", "nodes", kind::integer, "autoscale serve"},
    {"cluster", "transport", "transport", kind::text, "autoscale serve"},
    {"cluster", "link_mb_s", "link-mbs", kind::number, "autoscale serve"},
    {"cluster", "chunk_kb", "chunk-kb", kind::integer, "autoscale serve"},
    {"cluster", "placement", "placement", kind::list, "autoscale serve"},
    {"cluster", "controller", "controller", kind::text, "serve"},
    {"links", "layer_mb", "layer-mb", kind::number, "autoscale serve"},
    {"links", "globals_mb", "globals-mb", kind::number, "autoscale serve"},
    {"links", "network_gb_s", "network-gbs", kind::number, "autoscale serve"},
    {"links", "host_gb_s", "host-gbs", kind::number, "autoscale serve"},
    {"links", "remote_gb_s", "remote-gbs", kind::number, "autoscale serve"},
    {"device", "layer_ms", "device-layer-ms", kind::number, "autoscale serve"},
    {"device", "row_ms", "device-row-ms", kind::number, "autoscale serve"},
    {"serving", "shards", "shards", kind::text, "replay serve"},
    {"serving", "max_running", "max-running", kind::integer, "autoscale replay serve"},
    {"serving", "max_waiting", "max-waiting", kind::integer, "serve"},
    {"serving", "max_batch_tokens", "max-batch-tokens", kind::integer, "replay serve"},
    {"serving", "scheduler", "scheduler", kind::text, "autoscale serve"},
    {"serving", "migration", "migration", kind::text, "autoscale serve"},
    {"serving", "threads", "threads", kind::integer, "autoscale replay serve"},
    {"scaling", "policies", "policies", kind::list, "autoscale"},
    {"scaling", "policy", "policy", kind::text, "serve"},
    {"scaling", "min", "min", kind::integer, "autoscale serve"},
    {"scaling", "max", "max", kind::integer, "autoscale serve"},
    {"scaling", "queue", "queue", kind::number, "autoscale serve"},
    {"scaling", "keep_alive_s", "keep-alive-s", kind::number, "autoscale serve"},
    {"scaling", "queue_timeout_s", "queue-timeout-s", kind::number, "autoscale serve"},
    {"scaling", "min_share", "min-share", kind::number, "autoscale serve"},
    {"slo", "ttft_ms", "ttft-slo-ms", kind::number, "autoscale replay serve"},
    {"slo", "tbt_ms", "tbt-slo-ms", kind::number, "autoscale replay serve"},
    {"workload", "trace", "trace", kind::path, "autoscale replay"},
    {"workload", "format", "format", kind::text, "autoscale replay"},
    {"workload", "strict", "strict", kind::boolean, "autoscale replay"},
    {"workload", "start", "start", kind::number, "autoscale replay"},
    {"workload", "duration", "duration", kind::number, "autoscale replay"},
    {"workload", "max_requests", "max-requests", kind::integer, "autoscale replay"},
    {"workload", "speedup", "speedup", kind::number, "autoscale replay"},
    {"workload", "rate", "rate", kind::number, "autoscale replay"},
    {"workload", "max_prompt", "max-prompt", kind::integer, "autoscale replay"},
    {"workload", "max_output", "max-output", kind::integer, "autoscale replay"},
    {"workload", "n", "n", kind::integer, "autoscale replay"},
    {"workload", "gamma_rate", "gamma-rate", kind::number, "autoscale replay"},
    {"workload", "burstiness", "burstiness", kind::number, "autoscale replay"},
    {"workload", "ramp_to", "ramp-to", kind::number, "autoscale replay"},
    {"workload", "ramp_accel", "ramp-accel", kind::number, "autoscale replay"},
    {"workload", "seed", "seed", kind::integer, "autoscale replay"},
    {"http", "host", "host", kind::text, "serve"},
    {"http", "port", "port", kind::integer, "serve"},
    {"http", "threads", "http-threads", kind::integer, "serve"},
    {"http", "drain_timeout_s", "drain-timeout-s", kind::number, "serve"},
    {"output", "svg_prefix", "svg-prefix", kind::path, "autoscale"},
    {"output", "svg", "svg", kind::path, "replay"},
};

// [models.NAME]: one of several models behind a front door (serve): its path, and its own values
// of these knobs (serve --model NAME=PATH --model-knobs NAME:...).
const key_spec model_keys[] = {
    {"models", "policy", "policy", kind::text, "serve"},
    {"models", "min", "min", kind::integer, "serve"},
    {"models", "max", "max", kind::integer, "serve"},
    {"models", "queue", "queue", kind::number, "serve"},
    {"models", "keep_alive_s", "keep-alive-s", kind::number, "serve"},
    {"models", "queue_timeout_s", "queue-timeout-s", kind::number, "serve"},
    {"models", "min_share", "min-share", kind::number, "serve"},
    {"models", "ttft_ms", "ttft-slo-ms", kind::number, "serve"},
    {"models", "tbt_ms", "tbt-slo-ms", kind::number, "serve"},
    {"models", "max_running", "max-running", kind::integer, "serve"},
    {"models", "max_waiting", "max-waiting", kind::integer, "serve"},
    {"models", "scheduler", "scheduler", kind::text, "serve"},
    {"models", "batch_scheduler", "batch-scheduler", kind::text, "serve"},
    {"models", "migration", "migration", kind::text, "serve"},
};

// [model.random]: a random-weight model written before the job (strata gen-model options).
const char* random_keys[] = {"dim", "hidden", "layers", "heads", "kv_heads", "vocab", "seq_len", "seed"};

std::string render(const toml::node& n, kind k, const std::string& dir, std::string& err) {
  auto as_path = [&](const std::string& s) {
    if (s.empty() || s == "gamma" || fs::path(s).is_absolute()) return s;
    return (fs::path(dir) / s).lexically_normal().string();
  };
  switch (k) {
    case kind::text:
    case kind::path:
      if (!n.is_string()) return err = "must be a string", "";
      return k == kind::path ? as_path(n.as_string()->get()) : n.as_string()->get();
    case kind::integer:
      if (!n.is_integer()) return err = "must be an integer", "";
      return std::to_string(n.as_integer()->get());
    case kind::number: {
      if (!n.is_number()) return err = "must be a number", "";
      std::ostringstream os;
      os << n.value<double>().value_or(0);
      return os.str();
    }
    case kind::boolean:
      if (!n.is_boolean()) return err = "must be true or false", "";
      return n.as_boolean()->get() ? "1" : "";
    case kind::list: {
      std::string out;
      if (n.is_string()) return n.as_string()->get();
      if (!n.is_array()) return err = "must be a string or an array of strings", "";
      for (auto& e : *n.as_array()) {
        if (!e.is_string()) return err = "must be an array of strings", "";
        out += (out.empty() ? "" : ",") + e.as_string()->get();
      }
      return out;
    }
  }
  return "";
}

bool applies(const key_spec& s, const std::string& job) {
  std::istringstream is(s.jobs);
  std::string j;
  while (is >> j)
    if (j == job) return true;
  return false;
}

}  // namespace

expected<topology> parse_topology(const std::string& text, const std::string& dir, const std::string& source) {
  toml::table t;
  try {
    t = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << source << ":" << e.source().begin.line << ": " << e.description();
    return make_error(os.str());
  }
  topology out;
  out.source = source;
  // The job: given, or implied by the sections present.
  if (auto r = t.get("run")) {
    if (!r->is_string()) return make_error(source + ": 'run' must be a string");
    out.run = r->as_string()->get();
    if (out.run != "autoscale" && out.run != "replay" && out.run != "serve")
      return make_error(source + ": unknown run = \"" + out.run + "\" (expected autoscale, replay or serve)");
  } else {
    out.run = t.contains("http") || t.contains("models") ? "serve"
              : t.contains("scaling") || t.contains("cluster") ? "autoscale"
                                                              : "replay";
  }
  for (auto& [sec, node] : t) {
    std::string section(sec.str());
    if (section == "run") continue;
    if (!node.is_table()) return make_error(source + ": '" + section + "' must be a [section]");
    if (section == "models") {
      if (out.run != "serve") return make_error(source + ": [models] does not apply to run = \"" + out.run + "\" (only to serve)");
      for (auto& [mk, mv] : *node.as_table()) {
        std::string name(mk.str());
        const std::string where = "[models." + name + "]";
        if (!mv.is_table()) return make_error(source + ": " + where + " must be a table (path = \"...\" and knobs)");
        std::string path, knobs;
        for (auto& [k, v] : *mv.as_table()) {
          std::string key(k.str()), err;
          if (key == "path") {
            path = render(v, kind::path, dir, err);
            if (!err.empty()) return make_error(source + ": " + where + " path " + err);
            continue;
          }
          const key_spec* spec = nullptr;
          std::string known = "path";
          for (auto& s : model_keys) {
            known += std::string(", ") + s.key;
            if (key == s.key) spec = &s;
          }
          if (!spec) return make_error(source + ": unknown key '" + key + "' in " + where + " (known: " + known + ")");
          auto value = render(v, spec->k, dir, err);
          if (!err.empty()) return make_error(source + ": " + where + " " + key + " " + err);
          if (value.find_first_of(",:") != std::string::npos)
            return make_error(source + ": " + where + " " + key + " must not contain ',' or ':'");
          knobs += (knobs.empty() ? "" : ",") + std::string(spec->option) + "=" + value;
        }
        if (path.empty()) return make_error(source + ": " + where + " needs path = \"...\"");
        out.options.emplace_back("model", name + "=" + path);
        out.origins.emplace_back("model", where + " path");
        if (!knobs.empty()) out.options.emplace_back("model-knobs", name + ":" + knobs);
      }
      continue;
    }
    bool known_section = false;
    for (auto& s : keys) known_section = known_section || section == s.section;
    if (!known_section)
      return make_error(source + ": unknown section [" + section +
                        "] (known: model, models, cluster, links, device, serving, scaling, slo, workload, http, output)");
    for (auto& [k, v] : *node.as_table()) {
      std::string key(k.str());
      if (section == "model" && key == "random") {
        if (!v.is_table()) return make_error(source + ": [model.random] must be a table");
        for (auto& [rk, rv] : *v.as_table()) {
          std::string r(rk.str());
          bool ok = false;
          for (auto* n : random_keys) ok = ok || r == n;
          if (!ok) return make_error(source + ": unknown key '" + r + "' in [model.random]");
          if (!rv.is_integer()) return make_error(source + ": [model.random] " + r + " must be an integer");
          std::string opt = r == "kv_heads" ? "kv-heads" : r == "seq_len" ? "seq-len" : r;
          out.random_model.emplace_back(opt, std::to_string(rv.as_integer()->get()));
        }
        continue;
      }
      const key_spec* spec = nullptr;
      std::string known;
      for (auto& s : keys)
        if (section == s.section) {
          known += (known.empty() ? "" : ", ") + std::string(s.key);
          if (key == s.key) spec = &s;
        }
      if (!spec) return make_error(source + ": unknown key '" + key + "' in [" + section + "] (known: " + known + ")");
      if (!applies(*spec, out.run))
        return make_error(source + ": [" + section + "] " + key + " does not apply to run = \"" + out.run +
                          "\" (only to " + spec->jobs + ")");
      std::string err;
      auto value = render(v, spec->k, dir, err);
      if (!err.empty()) return make_error(source + ": [" + section + "] " + key + " " + err);
      out.origins.emplace_back(spec->option, "[" + section + "] " + key);
      if (spec->k == kind::boolean) {
        if (!value.empty()) out.flags.push_back(spec->option);
        continue;
      }
      out.options.emplace_back(spec->option, value);
    }
  }
  bool has_model = !out.random_model.empty();
  for (auto& [o, _] : out.options) has_model = has_model || o == "model";
  if (!has_model) return make_error(source + ": [model] needs path = \"...\" or a [model.random] table");
  if (t.contains("models") && t.contains("model"))
    return make_error(source + ": both [model] and [models.NAME]; one model goes in [model], several in [models.NAME]");
  if (!out.random_model.empty())
    for (auto& [o, _] : out.options)
      if (o == "model") return make_error(source + ": [model] has both path and random; choose one");
  if (out.run != "serve") {
    bool has_trace = false;
    for (auto& [o, _] : out.options) has_trace = has_trace || o == "trace";
    if (!has_trace) return make_error(source + ": [workload] needs trace = \"FILE\" or \"gamma\"");
  }
  return out;
}

expected<topology> load_topology(const std::string& path) {
  auto text = read_file(path, 1 << 20, "topology");
  if (!text) return text.err();
  auto dir = fs::path(path).parent_path().string();
  return parse_topology(*text, dir.empty() ? "." : dir, path);
}

}  // namespace strata
