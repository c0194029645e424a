// A small --key value / --flag parser for Strata's command-line tools.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
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
  static std::string format(double x) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", x);
    return b;
  }
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
