// Typed reads of a JSON object's fields (nlohmann) that never throw: a wrong type or a value
// out of range is an error naming the key, what was expected and what was found. Every reader
// of outside JSON in the core goes through these (configs, indexes, traces).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "dataflow/expected.hpp"

namespace strata {

class json_fields {
 public:
  // `where` prefixes every message ("config.json: ").
  json_fields(const nlohmann::json& obj, std::string where) : o_(obj), where_(std::move(where)) {}

  // Present and not null.
  bool has(const char* key) const { return o_.is_object() && o_.contains(key) && !o_[key].is_null(); }
  status require(const char* key) const;
  // Each leaves `out` as it is when the key is absent (or null).
  status integer(const char* key, int64_t& out, int64_t lo, int64_t hi) const;
  status integer(const char* key, int& out, int lo, int hi) const;
  status number(const char* key, double& out, double lo, double hi) const;
  status number(const char* key, float& out, double lo, double hi) const;
  status boolean(const char* key, bool& out) const;
  status string(const char* key, std::string& out) const;

  // "an integer (12)", "a string (\"yes\")", "an array", ...: what a value is, for messages.
  static std::string describe(const nlohmann::json& v);
  // The checks above on a value rather than a field (array elements); `name` names it.
  static status integer_value(const nlohmann::json& v, const std::string& name, int64_t& out, int64_t lo, int64_t hi);

 private:
  const nlohmann::json& o_;
  std::string where_;
};

}  // namespace strata
