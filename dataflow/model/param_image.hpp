// The parameter image of a model: the bytes the data plane moves. Segment 0 holds the global
// tensors (embedding, final norm, classifier), segment 1 + l holds layer l, each as stored (matrices
// in config.weights, norms f32; every tensor 64-byte aligned) in a fixed order, so a bf16 model
// moves half of f32's bytes and a q8 one about a quarter. Chunks never straddle segments, so a layer is ready the moment its last
// chunk lands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/model/model.hpp"

namespace strata {

// Host memory for a parameter image: 2 MiB aligned, advised onto transparent huge pages and
// populated by the kernel in one call. On the dev VM a 340 MiB image is ready in ~20 ms and
// written at ~20 GB/s, where a zero-filled std::vector on 4 KiB pages takes over a second of
// page faults and is then written at ~1.3 GB/s (TLB misses under virtualisation). Move-only.
class host_buffer {
 public:
  static expected<host_buffer> allocate(size_t bytes);
  host_buffer() = default;
  host_buffer(host_buffer&& o) noexcept;
  host_buffer& operator=(host_buffer&& o) noexcept;
  host_buffer(const host_buffer&) = delete;
  host_buffer& operator=(const host_buffer&) = delete;
  ~host_buffer();

  uint8_t* data() { return ptr_; }
  const uint8_t* data() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  uint8_t* ptr_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

struct image_layout {
  std::vector<uint64_t> offset;  // per segment
  std::vector<uint64_t> bytes;   // per segment
  uint64_t total = 0;
  int segments() const { return int(bytes.size()); }
};

image_layout layout_of(const model_config& c);

// Serialises a model into its image (size layout_of(c).total).
expected<host_buffer> make_image(const model& m);

// Rebuilds a model from an image (all segments present). `name` names the result. With `keep`
// (the buffer holding `image`) nothing is copied: every tensor borrows its bytes from the image
// and keeps it alive, so an instance on a node that holds the image runs on it (zero-copy). Only
// an image that no longer changes may be borrowed.
model_ptr model_from_image(const model_config& c, const uint8_t* image, const std::string& name,
                           std::shared_ptr<const host_buffer> keep = {});
// A model holding only the globals (embedding, final norm, classifier) of segment 0: what a
// head or tail stage needs while the layers are still streaming in.
model_ptr globals_from_segment(const model_config& c, const uint8_t* segment, const std::string& name,
                               std::shared_ptr<const host_buffer> keep = {});
// Rebuilds one layer from its segment.
std::shared_ptr<layer_weights> layer_from_segment(const model_config& c, const uint8_t* segment,
                                                  std::shared_ptr<const host_buffer> keep = {});

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
