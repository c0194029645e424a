#include "dataflow/serving/route.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <sstream>

namespace strata {

expected<std::vector<layer_range>> even_shards(int n_layers, int k) {
  if (k < 1 || k > n_layers)
    return make_error("cannot split " + std::to_string(n_layers) + " layers into " + std::to_string(k) +
                      " shards (need 1 <= shards <= layers)");
  std::vector<layer_range> out;
  int b = 0;
  for (int i = 0; i < k; ++i) {
    int n = n_layers / k + (i < n_layers % k ? 1 : 0);
    out.push_back({b, b + n});
    b += n;
  }
  return out;
}

expected<std::vector<layer_range>> parse_shards(const std::string& spec, int n_layers) {
  if (spec.empty()) return make_error("empty shard spec");
  if (spec.find(',') == std::string::npos) {
    char* end = nullptr;
    long k = std::strtol(spec.c_str(), &end, 10);
    if (*end != '\0') return make_error("bad shard spec '" + spec + "': expected a count or sizes like 2,3");
    return even_shards(n_layers, int(std::max<long>(0, std::min<long>(k, INT32_MAX))));
  }
  std::vector<layer_range> out;
  std::stringstream ss(spec);
  std::string part;
  int b = 0;
  while (std::getline(ss, part, ',')) {
    char* end = nullptr;
    long n = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || n <= 0)
      return make_error("bad shard size '" + part + "' in '" + spec + "'");
    if (n > long(n_layers) - b)
      return make_error("shard spec '" + spec + "' has more than the model's " + std::to_string(n_layers) + " layers");
    out.push_back({b, b + int(n)});
    b += int(n);
  }
  if (auto st = validate_route(out, n_layers); !st) return make_error("shard spec '" + spec + "': " + st.message());
  return out;
}

expected<std::vector<int>> parse_devices(const std::string& spec, size_t shards) {
  std::vector<int> out;
  std::stringstream ss(spec);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if (part == "cpu") {
      out.push_back(-1);
      continue;
    }
    char* end = nullptr;
    long n = part.rfind("cuda:", 0) == 0 ? std::strtol(part.c_str() + 5, &end, 10) : -1;
    if (n < 0 || n > 1023 || part.size() == 5 || *end != '\0')
      return make_error("bad device '" + part + "' in '" + spec + "': expected cpu or cuda:N");
    out.push_back(int(n));
  }
  if (out.size() == 1) out.assign(shards, out[0]);
  if (out.size() != shards)
    return make_error("device list '" + spec + "' names " + std::to_string(out.size()) + " devices for " +
                      std::to_string(shards) + " shards");
  return out;
}

status validate_route(const std::vector<layer_range>& hops, int n_layers) {
  int expect = 0;
  for (auto& h : hops) {
    if (h.begin != expect || h.end <= h.begin)
      return make_error("route " + to_string(hops) + " does not cover layers in order from " + std::to_string(expect));
    expect = h.end;
  }
  if (expect != n_layers)
    return make_error("route " + to_string(hops) + " covers " + std::to_string(expect) + " of " +
                      std::to_string(n_layers) + " layers");
  return {};
}

std::string to_string(const std::vector<layer_range>& hops) {
  std::string s;
  for (auto& h : hops) s += (s.empty() ? "" : " ") + ("[" + std::to_string(h.begin) + "," + std::to_string(h.end) + ")");
  return s;
}

}  // namespace strata
