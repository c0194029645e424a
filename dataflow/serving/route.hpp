// Sharding and routes as plain data. A route is the ordered list of layer ranges a request's
// forward pass visits; the actor layer attaches an actor to each range. Keeping it data is what
// lets scaling reroute requests layer by layer without a special code path.
#pragma once

#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

struct layer_range {
  int begin = 0;
  int end = 0;  // exclusive
  int size() const { return end - begin; }
  bool operator==(const layer_range&) const = default;
};

// Splits n_layers into k contiguous shards as evenly as possible (earlier shards get the extra).
expected<std::vector<layer_range>> even_shards(int n_layers, int k);

// Parses a shard spec: "K" (K even shards) or "a,b,c" (explicit sizes summing to n_layers).
expected<std::vector<layer_range>> parse_shards(const std::string& spec, int n_layers);

// Where each of `shards` shards runs: "cpu" or "cuda:N" per shard, comma-separated, or one
// entry for all. -1 means the CPU, N >= 0 the CUDA device N.
expected<std::vector<int>> parse_devices(const std::string& spec, size_t shards);

// A route must cover layers [0, n_layers) in order, each exactly once, with no empty hop.
status validate_route(const std::vector<layer_range>& hops, int n_layers);

std::string to_string(const std::vector<layer_range>& hops);

}  // namespace strata
