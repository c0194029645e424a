// llama2.c "legacy" checkpoints: a 7-int32 header, then fp32 tensors stacked over layers.
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "dataflow/model_io.hpp"

namespace strata {

expected<model_ptr> load_llama2c(const std::string& path) {
  auto file = mapped_file::open(path);
  if (!file) return file.err();
  const size_t header_bytes = 7 * sizeof(int32_t);
  if (file->size() < header_bytes)
    return make_error(path + ": truncated llama2.c checkpoint: " + std::to_string(file->size()) +
                      " bytes, the header alone needs 28");
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof h);
  auto m = std::make_shared<model>();
  m->name = std::filesystem::path(path).stem().string();
  m->format = source_format::llama2c;
  auto& c = m->config;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -h[5];
  c.seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rope = rope_style::interleaved;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  if (auto st = c.validate(); !st) return make_error(path + ": bad llama2.c header: " + st.message());
  if (c.head_dim * c.n_heads != c.dim)
    return make_error(path + ": bad llama2.c header: dim " + std::to_string(c.dim) +
                      " is not divisible by n_heads " + std::to_string(c.n_heads));

  auto slots = allocate_slots(*m);
  // Source order of the stacked arrays and which per-layer slot each feeds.
  const char* stacked[] = {"att_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"};
  const size_t per_layer = std::size(stacked);
  std::vector<tensor_slot*> order;
  order.push_back(&slots[0]);  // tok_emb
  for (size_t s = 0; s < per_layer; ++s)
    for (int l = 0; l < c.n_layers; ++l) order.push_back(&slots[1 + size_t(l) * per_layer + s]);
  const size_t final_idx = 1 + size_t(c.n_layers) * per_layer;
  order.push_back(&slots[final_idx]);  // final_norm

  uint64_t off = header_bytes;
  const std::string fname = std::filesystem::path(path).filename().string();
  auto take = [&](tensor_slot& slot, const std::string& source_name) -> status {
    uint64_t len = slot.count() * 4;
    if (off + len > file->size())
      return make_error(path + ": truncated: tensor '" + source_name + "' " + shape_string(slot.shape) +
                        " needs bytes [" + std::to_string(off) + ", " + std::to_string(off + len) +
                        ") but the file has " + std::to_string(file->size()) + " bytes");
    const uint8_t* p = file->data() + off;
    std::memcpy(slot.dst, p, len);
    tensor_record r;
    r.name = slot.name;
    r.source_name = source_name;
    r.layer = slot.layer;
    r.type = dtype::f32;
    r.shape = slot.shape;
    r.file = fname;
    r.offset = off;
    r.length = len;
    r.checksum = checksum64(p, len);
    m->tensors.push_back(std::move(r));
    off += len;
    return {};
  };
  for (auto* slot : order) {
    std::string src = slot->layer < 0 ? slot->name
                                       : slot->name.substr(slot->name.rfind('.') + 1) + "[" +
                                             std::to_string(slot->layer) + "]";
    if (auto st = take(*slot, src); !st) return st.err();
  }
  // Two unused RoPE tables, then the classifier when not shared.
  uint64_t rope_bytes = 2ull * uint64_t(c.seq_len) * uint64_t(c.head_dim / 2) * 4;
  off += rope_bytes;
  if (!c.tied_embeddings) {
    if (auto st = take(slots.back(), "wcls"); !st) return st.err();
  }
  if (off != file->size())
    return make_error(path + ": size mismatch: header " + c.describe() + " implies " + std::to_string(off) +
                      " bytes but the file has " + std::to_string(file->size()));
  // Manifest order: by layer, then name, so one layer's tensors are contiguous in the list.
  std::stable_sort(m->tensors.begin(), m->tensors.end(),
                   [](const tensor_record& a, const tensor_record& b) { return a.layer < b.layer; });
  m->files.push_back(fname);
  return model_ptr(std::move(m));
}

}  // namespace strata
