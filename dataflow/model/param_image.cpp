#include "dataflow/model/param_image.hpp"

#include "dataflow/files.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it, older kernels answer EINVAL
#endif

#include "dataflow/model/model_io.hpp"

namespace strata {

namespace {

// The global tensors in image order (const or not, as the model is).
template <class M>
auto globals_of(M& m) {
  std::vector<decltype(&m.tok_emb)> out{&m.tok_emb, &m.final_norm};
  if (!m.config.tied_embeddings) out.push_back(&m.lm_head);  // as global_shapes lists it
  return out;
}

using part_shape = layer_weights::part_shape;

std::vector<part_shape> global_shapes(const model_config& c) {
  const part_shape emb{c.weights, size_t(c.vocab_size), size_t(c.dim)}, norm{dtype::f32, 1, size_t(c.dim)};
  if (c.tied_embeddings) return {emb, norm};
  return {emb, norm, emb};
}

// Each tensor starts 64-byte aligned in its segment: vector loads, and f32 norms after q8 rows
// (34-byte blocks) stay aligned.
uint64_t padded_bytes(const part_shape& p) { return (p.rows * row_bytes(p.type, p.cols) + 63) / 64 * 64; }

template <class Shapes>
uint64_t segment_bytes(const Shapes& shapes) {
  uint64_t n = 0;
  for (auto& p : shapes) n += padded_bytes(p);
  return n;
}

// Fills tensors from a segment: copies, or borrows the bytes when `keep` owns the image.
template <class Parts, class Shapes>
void fill(const Parts& parts, const Shapes& shapes, const uint8_t* seg, const std::shared_ptr<const host_buffer>& keep) {
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& s = shapes[i];
    if (keep)
      parts[i]->borrow(s.type, s.rows, s.cols, seg, keep);
    else
      std::memcpy(parts[i]->allocate(s.type, s.rows, s.cols), seg, s.rows * row_bytes(s.type, s.cols));
    seg += padded_bytes(s);
  }
}

// Writes tensors into a segment in fill's layout (the padding stays zero).
template <class Parts>
uint8_t* put(const Parts& parts, uint8_t* p) {
  for (const tensor* t : parts) {
    const uint64_t n = t->bytes(), padded = padded_bytes({t->type(), t->rows(), t->cols()});
    std::memcpy(p, t->raw(), n);
    std::memset(p + n, 0, padded - n);  // checksums cover the padding: it must not be garbage
    p += padded;
  }
  return p;
}

}  // namespace

expected<host_buffer> host_buffer::allocate(size_t bytes) {
  host_buffer b;
  if (bytes == 0) return b;
  if (bytes > memory_budget())
    return make_error("cannot allocate " + std::to_string(bytes) + " bytes of host memory: the memory budget is " +
                      format_bytes(memory_budget()));
  constexpr size_t huge = size_t(2) << 20;
  b.mapped_ = (bytes + huge - 1) / huge * huge;
  void* p = std::aligned_alloc(huge, b.mapped_);
  if (!p) return make_error("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
  // Huge pages first, then populate: populating first would fix the range on 4 KiB pages.
  ::madvise(p, b.mapped_, MADV_HUGEPAGE);  // advice: ignored where the kernel has no THP
  if (::madvise(p, b.mapped_, MADV_POPULATE_WRITE) != 0)  // Linux < 5.14: touch every page
    for (size_t i = 0; i < b.mapped_; i += 4096) static_cast<volatile uint8_t*>(p)[i] = 0;
  b.ptr_ = static_cast<uint8_t*>(p);
  b.size_ = bytes;
  return b;
}

host_buffer::host_buffer(host_buffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)), mapped_(std::exchange(o.mapped_, 0)) {}

host_buffer& host_buffer::operator=(host_buffer&& o) noexcept {
  if (this != &o) {
    this->~host_buffer();
    ptr_ = std::exchange(o.ptr_, nullptr);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, 0);
  }
  return *this;
}

host_buffer::~host_buffer() {
  std::free(ptr_);
}

image_layout layout_of(const model_config& c) {
  image_layout l;
  const uint64_t globals = segment_bytes(global_shapes(c)), layer = segment_bytes(layer_weights::shapes(c));
  l.bytes.push_back(globals);
  for (int i = 0; i < c.n_layers; ++i) l.bytes.push_back(layer);
  for (auto b : l.bytes) {
    l.offset.push_back(l.total);
    l.total += b;
  }
  return l;
}

expected<host_buffer> make_image(const model& m) {
  auto l = layout_of(m.config);
  auto img = host_buffer::allocate(l.total);
  if (!img) return img.err();
  uint8_t* p = put(globals_of(m), img->data());
  for (auto& lw : m.layers) p = put(lw->parts(), p);
  return img;
}

std::shared_ptr<layer_weights> layer_from_segment(const model_config& c, const uint8_t* seg,
                                                  std::shared_ptr<const host_buffer> keep) {
  auto w = std::make_shared<layer_weights>();
  fill(w->parts(), layer_weights::shapes(c), seg, keep);
  return w;
}

model_ptr globals_from_segment(const model_config& c, const uint8_t* seg, const std::string& name,
                               std::shared_ptr<const host_buffer> keep) {
  auto m = std::make_shared<model>();
  m->name = name;
  m->format = source_format::generated;
  m->config = c;
  fill(globals_of(*m), global_shapes(c), seg, keep);
  return m;
}

model_ptr model_from_image(const model_config& c, const uint8_t* image, const std::string& name,
                           std::shared_ptr<const host_buffer> keep) {
  auto m = std::const_pointer_cast<model>(globals_from_segment(c, image, name, keep));
  auto l = layout_of(c);
  for (int i = 0; i < c.n_layers; ++i)
    m->layers.push_back(layer_from_segment(c, image + l.offset[size_t(i + 1)], keep));
  return m;
}

expected<std::vector<chunk_desc>> make_chunks(const image_layout& l, const uint8_t* image, uint64_t chunk_bytes,
                                              std::vector<int> order) {
  if (chunk_bytes < 64) return make_error("chunk size must be at least 64 bytes");
  if (order.empty())
    for (int s = 0; s < l.segments(); ++s) order.push_back(s);
  std::vector<bool> seen(size_t(l.segments()), false);
  for (int s : order) {
    if (s < 0 || s >= l.segments() || seen[size_t(s)])
      return make_error("segment order must list each of the " + std::to_string(l.segments()) +
                        " segments once (bad: " + std::to_string(s) + ")");
    seen[size_t(s)] = true;
  }
  if (int(order.size()) != l.segments()) return make_error("segment order misses segments");
  std::vector<chunk_desc> out;
  for (int s : order)
    for (uint64_t o = 0; o < l.bytes[size_t(s)]; o += chunk_bytes) {
      chunk_desc c;
      c.index = uint32_t(out.size());
      c.segment = s;
      c.offset = l.offset[size_t(s)] + o;
      c.length = std::min(chunk_bytes, l.bytes[size_t(s)] - o);
      c.checksum = image ? checksum64(image + c.offset, c.length) : 0;
      out.push_back(c);
    }
  return out;
}

}  // namespace strata
