// A named registry: the extension points (scaling policies, route schedulers) are entries with a
// name, looked up by it; built-ins are its first entries and an app file adds its own.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

template <class Entry>  // Entry has a std::string name
class registry {
 public:
  registry(std::string kind, std::vector<Entry> builtins) : kind_(std::move(kind)), entries_(std::move(builtins)) {}

  // An empty or taken name is an error.
  status add(Entry e) {
    std::lock_guard<std::mutex> g(mu_);
    if (e.name.empty()) return make_error("a " + kind_ + " needs a name");
    for (auto& x : entries_)
      if (x.name == e.name) return make_error(kind_ + " '" + e.name + "' is registered already");
    entries_.push_back(std::move(e));
    return {};
  }

  std::vector<Entry> all() const {
    std::lock_guard<std::mutex> g(mu_);
    return entries_;
  }

  // The entry, or an error naming every registered one.
  expected<Entry> find(const std::string& name) const {
    std::lock_guard<std::mutex> g(mu_);
    std::string names;
    for (auto& e : entries_) {
      if (e.name == name) return e;
      names += (names.empty() ? "" : ", ") + e.name;
    }
    return make_error("unknown " + kind_ + " '" + name + "' (expected one of " + names + ")");
  }

 private:
  std::string kind_;
  mutable std::mutex mu_;
  std::vector<Entry> entries_;
};

}  // namespace strata
