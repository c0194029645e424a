#include "dataflow/json_fields.hpp"

#include <cmath>

namespace strata {

std::string json_fields::describe(const nlohmann::json& v) {
  auto shown = [&](const char* kind) {
    std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (s.size() > 40) s = s.substr(0, 37) + "...";
    return std::string(kind) + " (" + s + ")";
  };
  switch (v.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean: return shown("a boolean");
    case nlohmann::json::value_t::string: return shown("a string");
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return shown("an integer");
    case nlohmann::json::value_t::number_float: return shown("a number");
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::object: return "an object";
    default: return "an unsupported value";
  }
}

status json_fields::require(const char* key) const {
  if (!has(key)) return make_error(where_ + "missing required key '" + key + "'");
  return {};
}

status json_fields::integer_value(const nlohmann::json& v, const std::string& name, int64_t& out, int64_t lo,
                                  int64_t hi) {
  auto range = [&] {
    return make_error(name + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                      describe(v));
  };
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (hi < 0 || u > uint64_t(hi)) return range();
    out = int64_t(u);
  } else if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) return range();
    out = x;
  } else {
    return range();
  }
  if (out < lo) return range();
  return {};
}

status json_fields::integer(const char* key, int64_t& out, int64_t lo, int64_t hi) const {
  if (!has(key)) return {};
  if (auto st = integer_value(o_[key], where_ + "'" + key + "'", out, lo, hi); !st) return st;
  return {};
}

status json_fields::integer(const char* key, int& out, int lo, int hi) const {
  int64_t v = out;
  if (auto st = integer(key, v, lo, hi); !st) return st;
  out = int(v);
  return {};
}

status json_fields::number(const char* key, double& out, double lo, double hi) const {
  if (!has(key)) return {};
  const auto& v = o_[key];
  double x = v.is_number() ? v.get<double>() : NAN;
  if (!v.is_number() || !(x >= lo && x <= hi))
    return make_error(where_ + "'" + key + "' must be a number in [" + nlohmann::json(lo).dump() + ", " +
                      nlohmann::json(hi).dump() + "], got " + describe(v));
  out = x;
  return {};
}

status json_fields::number(const char* key, float& out, double lo, double hi) const {
  double v = out;
  if (auto st = number(key, v, lo, hi); !st) return st;
  out = float(v);
  return {};
}

status json_fields::boolean(const char* key, bool& out) const {
  if (!has(key)) return {};
  const auto& v = o_[key];
  if (!v.is_boolean()) return make_error(where_ + "'" + key + "' must be a boolean, got " + describe(v));
  out = v.get<bool>();
  return {};
}

status json_fields::string(const char* key, std::string& out) const {
  if (!has(key)) return {};
  const auto& v = o_[key];
  if (!v.is_string()) return make_error(where_ + "'" + key + "' must be a string, got " + describe(v));
  out = v.get<std::string>();
  return {};
}

}  // namespace strata
