// The parameter image of a model: the bytes the data plane moves. Segment 0 holds the global
// tensors (embedding, final norm, classifier), segment 1 + l holds layer l, each as fp32 values
// in a fixed order. Chunks never straddle segments, so a layer is ready the moment its last
// chunk lands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/model.hpp"

namespace strata {

struct image_layout {
  std::vector<uint64_t> offset;  // per segment
  std::vector<uint64_t> bytes;   // per segment
  uint64_t total = 0;
  int segments() const { return int(bytes.size()); }
};

image_layout layout_of(const model_config& c);

// Serialises a model into its image (size layout_of(c).total).
std::vector<uint8_t> make_image(const model& m);

// Rebuilds a model from an image (all segments present). `name` names the result.
model_ptr model_from_image(const model_config& c, const uint8_t* image, const std::string& name);
// A model holding only the globals (embedding, final norm, classifier) of segment 0: what a
// head or tail stage needs while the layers are still streaming in.
model_ptr globals_from_segment(const model_config& c, const uint8_t* segment, const std::string& name);
// Rebuilds one layer from its segment.
std::shared_ptr<layer_weights> layer_from_segment(const model_config& c, const uint8_t* segment);

struct chunk_desc {
  uint32_t index = 0;
  int32_t segment = 0;  // 0: globals, 1 + l: layer l
  uint64_t offset = 0;  // in the image
  uint64_t length = 0;
  uint64_t checksum = 0;
};

// Cuts the image into chunks of at most chunk_bytes, segment by segment in `segment_order`
// (every segment exactly once; empty: 0, 1, 2, ...). Checksums are computed from `image`.
expected<std::vector<chunk_desc>> make_chunks(const image_layout& l, const uint8_t* image, uint64_t chunk_bytes,
                                              std::vector<int> segment_order = {});

}  // namespace strata
