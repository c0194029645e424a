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

// The global tensors in image order (const or not, as the model is), and their element counts.
template <class M>
auto globals_of(M& m) {
  std::vector<decltype(&m.tok_emb)> out{&m.tok_emb, &m.final_norm};
  if (!m.config.tied_embeddings) out.push_back(&m.lm_head);  // as global_sizes counts it
  return out;
}

std::vector<size_t> global_sizes(const model_config& c) {
  size_t vd = size_t(c.vocab_size) * size_t(c.dim);
  if (c.tied_embeddings) return {vd, size_t(c.dim)};
  return {vd, size_t(c.dim), vd};
}

// Fills tensors from a segment: copies, or borrows the bytes when `keep` owns the image.
template <class Parts, class Sizes>
void fill(const Parts& parts, const Sizes& sizes, const uint8_t* seg, const std::shared_ptr<const host_buffer>& keep) {
  for (size_t i = 0; i < parts.size(); ++i) {
    auto* values = reinterpret_cast<const float*>(seg);
    if (keep)
      parts[i]->borrow(values, sizes[i], keep);
    else
      parts[i]->copy(values, sizes[i]);
    seg += sizes[i] * 4;
  }
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
  uint64_t globals = 0;
  for (auto n : global_sizes(c)) globals += 4ull * n;
  uint64_t layer = 4ull * c.layer_params();
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
  uint8_t* p = img->data();
  for (const tensor* t : globals_of(m)) {
    std::memcpy(p, t->data(), t->size() * 4);
    p += t->size() * 4;
  }
  for (auto& lw : m.layers)
    for (const tensor* t : lw->parts()) {
      std::memcpy(p, t->data(), t->size() * 4);
      p += t->size() * 4;
    }
  return img;
}

std::shared_ptr<layer_weights> layer_from_segment(const model_config& c, const uint8_t* seg,
                                                  std::shared_ptr<const host_buffer> keep) {
  auto w = std::make_shared<layer_weights>();
  fill(w->parts(), layer_weights::sizes(c), seg, keep);
  return w;
}

model_ptr globals_from_segment(const model_config& c, const uint8_t* seg, const std::string& name,
                               std::shared_ptr<const host_buffer> keep) {
  auto m = std::make_shared<model>();
  m->name = name;
  m->format = source_format::generated;
  m->config = c;
  fill(globals_of(*m), global_sizes(c), seg, keep);
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
