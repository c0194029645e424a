// A multicast plan plus everything a node needs to execute its part (chunk table, peer UCX
// addresses, the model manifest), serialised as a flatbuffers TransferPlan.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dataflow/cluster/multicast.hpp"
#include "dataflow/model/param_image.hpp"

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
// Verifies the flatbuffer, then that the chunks tile an image without overflow and every tree
// names known chunks; an error says which check failed.
expected<transfer_plan> decode_plan(const uint8_t* data, size_t size);

// A chunk table from another process, checked before use: indices 0, 1, 2, ... in order,
// segments not negative, non-empty ranges whose ends do not overflow. Sets image_bytes to the
// furthest end.
status check_chunk_table(const std::vector<chunk_desc>& chunks, uint64_t& image_bytes);

}  // namespace strata
