// A small --key value / --flag parser for Strata's command-line tools.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

class args {
 public:
  // `flags` take no value; every other --option takes exactly one.
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
  std::string str(const std::string& k, const std::string& def = "") const {
    auto it = v_.find(k);
    return it == v_.end() ? def : it->second;
  }
  expected<long> integer(const std::string& k, long def) const {
    if (!has(k)) return def;
    char* end = nullptr;
    long v = std::strtol(v_.at(k).c_str(), &end, 10);
    if (v_.at(k).empty() || *end != '\0') return make_error("--" + k + " expects an integer, got '" + v_.at(k) + "'");
    return v;
  }
  expected<double> number(const std::string& k, double def) const {
    if (!has(k)) return def;
    char* end = nullptr;
    double v = std::strtod(v_.at(k).c_str(), &end);
    if (v_.at(k).empty() || *end != '\0') return make_error("--" + k + " expects a number, got '" + v_.at(k) + "'");
    return v;
  }

 private:
  std::map<std::string, std::string> v_;
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

}  // namespace strata
