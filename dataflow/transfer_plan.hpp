// A multicast plan plus everything a node needs to execute its part (chunk table, peer UCX
// addresses, the model manifest), serialised as a flatbuffers TransferPlan.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dataflow/multicast.hpp"
#include "dataflow/param_image.hpp"

namespace strata {

struct transfer_plan {
  uint64_t id = 0;
  std::string model;
  multicast_plan plan;
  std::vector<uint8_t> manifest;  // flatbuffers ModelManifest
  uint64_t image_bytes = 0;
  std::vector<chunk_desc> chunks;
  std::map<node_id, std::vector<uint8_t>> peers;  // UCX worker addresses

  // The tree that carries chunk c.
  const forward_tree* tree_of(uint32_t chunk) const;
  bool is_target(node_id n) const;
};

std::vector<uint8_t> encode_plan(const transfer_plan& p);
expected<transfer_plan> decode_plan(const uint8_t* data, size_t size);

}  // namespace strata
