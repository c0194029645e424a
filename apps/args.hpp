// A small --key value / --flag parser for Strata's command-line tools.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

// A command-line mistake: main() prints "strata: error: <what>" and exits 1.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// main() of a tool without strata.cpp's error handling (the benchmarks, the examples): fn's
// usage_error becomes one line, "name: <what>", and exit status 2, never an abort.
inline int guarded_main(const char* name, int argc, char** argv, int (*fn)(int, char**)) {
  try {
    return fn(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 2;
  }
}

// One option of a command: the single source of its parser, its --help and the README's CLI
// reference (apps/commands.cpp holds the table; a docs test keeps the README equal to it).
struct option_spec {
  std::string name;   // without "--"
  std::string value;  // what it takes, e.g. "N", "PATH"; empty: a flag that takes none
  std::string def;    // the default the typed getters use when the option is absent ("" = none)
  std::string help;   // one line; for people
  std::string shown;  // how the default reads in help when it is computed (e.g. "cores"); else def
};

struct command_spec {
  std::string name;      // "generate", "cluster view"
  std::string operands;  // what comes before the options, e.g. "FILE"
  std::string summary;
  std::vector<option_spec> options;
  std::string notes;  // a paragraph after the options
  const option_spec* find(const std::string& k) const {
    for (auto& o : options)
      if (o.name == k) return &o;
    return nullptr;
  }
};

// The name closest to a mistyped one (edit distance at most 2, or a prefix), or "".
inline std::string nearest_name(const std::vector<std::string>& names, const std::string& k) {
  std::string best;
  size_t best_d = 3;
  for (const std::string& n : names) {
    std::vector<size_t> prev(n.size() + 1), cur(n.size() + 1);
    for (size_t j = 0; j <= n.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= k.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= n.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (k[i - 1] == n[j - 1] ? 0 : 1)});
      std::swap(prev, cur);
    }
    size_t d = prev[n.size()];
    if (k.size() >= 3 && n.rfind(k, 0) == 0) d = std::min<size_t>(d, 1);
    if (d < best_d && d <= k.size() / 2) best_d = d, best = n;  // "min" is not a typo of "n"
  }
  return best;
}

class args {
 public:
  // Values given by a program rather than a command line (a topology file): each must be one of
  // the command's options, flags with no value.
  static expected<args> from_values(const command_spec& spec,
                                    const std::vector<std::pair<std::string, std::string>>& values,
                                    const std::vector<std::string>& flags = {}) {
    args a;
    a.spec_ = &spec;
    for (auto& [k, v] : values) {
      const option_spec* o = spec.find(k);
      if (!o || o->value.empty()) return make_error(spec.name + ": no option --" + k + " that takes a value");
      a.v_[k] = v;
      a.all_[k].push_back(v);  // an option that may repeat (--model) keeps every value
    }
    for (auto& k : flags) {
      const option_spec* o = spec.find(k);
      if (!o || !o->value.empty()) return make_error(spec.name + ": no flag --" + k);
      a.v_[k] = "1";
    }
    return a;
  }
  // Parses argv[first..] against a command's options: --key value, --key=value, or --flag; on
  // top of `base`'s values when given (the command line overrides them).
  static expected<args> parse(int argc, char** argv, int first, const command_spec& spec, const args* base = nullptr) {
    args a;
    if (base) a = *base;
    a.spec_ = &spec;
    std::set<std::string> on_line;  // options the command line gives (their file values are replaced)
    auto put = [&](const std::string& k, std::string v) {
      if (on_line.insert(k).second) a.all_[k].clear();
      a.all_[k].push_back(v);
      a.v_[k] = std::move(v);
    };
    for (int i = first; i < argc; ++i) {
      std::string k = argv[i];
      if (k.rfind("--", 0) != 0)
        return make_error(spec.name + ": unexpected argument '" + k + "' (see strata " + spec.name + " --help)");
      k = k.substr(2);
      std::optional<std::string> inline_value;
      if (auto eq = k.find('='); eq != std::string::npos) inline_value = k.substr(eq + 1), k = k.substr(0, eq);
      const option_spec* o = spec.find(k);
      if (!o) {
        std::vector<std::string> names;
        for (auto& x : spec.options) names.push_back(x.name);
        auto near = nearest_name(names, k);
        return make_error(spec.name + ": unknown option --" + k +
                          (near.empty() ? "" : " (did you mean --" + near + "?)") + " (see strata " + spec.name +
                          " --help)");
      }
      if (o->value.empty()) {
        if (inline_value) return make_error("--" + k + " takes no value");
        a.v_[k] = "1";
        continue;
      }
      if (inline_value) {
        put(k, *inline_value);
        continue;
      }
      if (i + 1 >= argc) return make_error("option --" + k + " needs a value (" + o->value + ")");
      put(k, argv[++i]);
    }
    return a;
  }
  // For tools without a command table (the benchmarks): `flags` take no value; every other
  // --option takes exactly one.
  static expected<args> parse(int argc, char** argv, int first, const std::set<std::string>& known,
                              const std::set<std::string>& flags = {}) {
    args a;
    for (int i = first; i < argc; ++i) {
      std::string k = argv[i];
      if (k.rfind("--", 0) != 0) return make_error("unexpected argument '" + k + "'");
      k = k.substr(2);
      if (!known.count(k) && !flags.count(k)) return make_error("unknown option --" + k);
      if (flags.count(k)) {
        a.v_[k] = "1";
        continue;
      }
      if (i + 1 >= argc) return make_error("option --" + k + " needs a value");
      a.v_[k] = argv[++i];
    }
    return a;
  }
  bool has(const std::string& k) const { return v_.count(k) > 0; }
  void set(const std::string& k, const std::string& v) {
    v_[k] = v;
    all_[k] = {v};
  }
  // Every value given for an option that may repeat (--model a=X --model b=Y), in order; the
  // other getters see the last.
  std::vector<std::string> values(const std::string& k) const {
    if (auto it = all_.find(k); it != all_.end()) return it->second;
    return has(k) ? std::vector<std::string>{v_.at(k)} : std::vector<std::string>{};
  }
  // "--key value ..." as a command line would say it.
  std::string line() const {
    std::string out;
    for (auto& [k, v] : v_) {
      const option_spec* o = spec_ ? spec_->find(k) : nullptr;
      for (auto& x : values(k)) out += " --" + k + (o && o->value.empty() ? "" : " " + x);
    }
    return out;
  }
  std::string str(const std::string& k, const std::string& def) const {
    auto it = v_.find(k);
    return it == v_.end() ? def : it->second;
  }
  // The value, or the command table's default for it (empty for a parser without a table, as
  // the benchmarks use).
  std::string str(const std::string& k) const {
    if (auto it = v_.find(k); it != v_.end()) return it->second;
    return spec_ ? table_default(k) : std::string();
  }
  long integer(const std::string& k, long lo, long hi) const { return with_default(k).integer(k, 0, lo, hi); }
  double number(const std::string& k, double lo, double hi) const { return with_default(k).number(k, 0, lo, hi); }
  double positive(const std::string& k, double hi) const { return with_default(k).positive(k, 0, hi); }
  std::string choice(const std::string& k, std::initializer_list<const char*> options) const {
    return choice(k, table_default(k), options);
  }
  // Typed values, checked: a value that is not of the type, or lies outside [lo, hi], throws
  // usage_error ("--min: expected an integer, got 'abc'"), which main() reports in one line with
  // exit status 1. `def` is returned when the option is absent.
  long integer(const std::string& k, long def, long lo, long hi) const {
    if (!has(k)) return def;
    const std::string& s = v_.at(k);
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) throw usage_error("--" + k + ": expected an integer, got '" + s + "'");
    if (v < lo || v > hi)
      throw usage_error("--" + k + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                        "], got '" + s + "'");
    return v;
  }
  double number(const std::string& k, double def, double lo, double hi) const {
    if (!has(k)) return def;
    const std::string& s = v_.at(k);
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v)) throw usage_error("--" + k + ": expected a number, got '" + s + "'");
    if (v < lo || v > hi)
      throw usage_error("--" + k + ": expected a number in [" + format(lo) + ", " + format(hi) + "], got '" + s + "'");
    return v;
  }
  // A number that must be strictly positive (rates, sizes, speeds).
  double positive(const std::string& k, double def, double hi) const {
    double v = number(k, def, 0, hi);
    if (!(v > 0)) throw usage_error("--" + k + ": expected a positive number, got '" + v_.at(k) + "'");
    return v;
  }
  // One of `options`.
  std::string choice(const std::string& k, const std::string& def, std::initializer_list<const char*> options) const {
    std::string v = str(k, def), all;
    for (const char* o : options) {
      if (v == o) return v;
      all += std::string(all.empty() ? "" : ", ") + o;
    }
    throw usage_error("--" + k + ": expected one of " + all + ", got '" + v + "'");
  }

 private:
  std::string table_default(const std::string& k) const {
    const option_spec* o = spec_ ? spec_->find(k) : nullptr;
    if (!o) throw std::logic_error("option --" + k + " is not in its command's table");
    return o->def;
  }
  // Itself, or a copy holding the table's default for k: a default goes through the same checks
  // as a value from the command line.
  args with_default(const std::string& k) const {
    if (has(k)) return *this;
    args d = *this;
    d.v_[k] = table_default(k);
    if (d.v_[k].empty()) throw std::logic_error("option --" + k + " has no default in its command's table");
    return d;
  }
  static std::string format(double x) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", x);
    return b;
  }
  std::map<std::string, std::string> v_;
  std::map<std::string, std::vector<std::string>> all_;
  const command_spec* spec_ = nullptr;
};

// Prints a CLI error and gives the exit status to return.
inline int fail(const std::string& msg) {
  std::fprintf(stderr, "strata: error: %s\n", msg.c_str());
  return 1;
}

// "a,b,,c" -> {"a", "b", "c"}
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

// "1,4,16" -> {1, 4, 16}: every part an integer in [lo, hi], else usage_error naming the option
// and the part ("--batches: '0' is not a batch size in [1, 4096]").
inline std::vector<int> int_list(const std::string& key, const std::string& s, int lo, int hi, const std::string& what) {
  std::vector<int> out;
  for (auto& part : split_list(s)) {
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (*end || v < lo || v > hi)
      throw usage_error("--" + key + ": '" + part + "' is not " + what + " in [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + "]");
    out.push_back(int(v));
  }
  return out;
}

}  // namespace strata
