// llama2.c "legacy" checkpoints: a 7-int32 header, then fp32 tensors stacked over layers.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "dataflow/model/model_io.hpp"

namespace strata {

expected<model_ptr> load_llama2c(const std::string& path, const load_options& o) {
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
  c.vocab_size = int(std::min<int64_t>(std::abs(int64_t(h[5])), INT32_MAX));  // negative: untied classifier
  c.seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rope = rope_style::interleaved;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.weights = o.convert ? o.weights : dtype::f32;  // the file holds f32
  if (auto st = c.validate(); !st) return make_error(path + ": bad llama2.c header: " + st.message());
  if (c.head_dim * c.n_heads != c.dim)
    return make_error(path + ": bad llama2.c header: dim " + std::to_string(c.dim) +
                      " is not divisible by n_heads " + std::to_string(c.n_heads));
  // Where each tensor lies, checked against the file before anything is allocated: a corrupt
  // header must not cost gigabytes before it is found out. validate() bounds every field, so
  // none of these sums can overflow.
  auto plan = model_slots(c);
  const char* stacked[] = {"att_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"};  // source order
  const size_t per_layer = std::size(stacked);
  std::vector<size_t> order;  // indices into the slot list, in file order
  order.push_back(0);         // tok_emb
  for (size_t s = 0; s < per_layer; ++s)
    for (int l = 0; l < c.n_layers; ++l) order.push_back(1 + size_t(l) * per_layer + s);
  order.push_back(1 + size_t(c.n_layers) * per_layer);  // final_norm
  std::vector<uint64_t> offset(plan.size());
  std::vector<std::string> source(plan.size());
  uint64_t off = header_bytes;
  auto place = [&](size_t i, std::string src) -> status {
    uint64_t len = plan[i].count() * 4;
    if (off + len > file->size())
      return make_error(path + ": truncated: tensor '" + src + "' " + shape_string(plan[i].shape) +
                        " needs bytes [" + std::to_string(off) + ", " + std::to_string(off + len) +
                        ") but the file has " + std::to_string(file->size()) + " bytes");
    offset[i] = off;
    source[i] = std::move(src);
    off += len;
    return {};
  };
  for (size_t i : order) {
    auto& slot = plan[i];
    std::string src = slot.layer < 0 ? slot.name
                                     : slot.name.substr(slot.name.rfind('.') + 1) + "[" + std::to_string(slot.layer) + "]";
    if (auto st = place(i, std::move(src)); !st) return st.err();
  }
  off += 2ull * uint64_t(c.seq_len) * uint64_t(c.head_dim / 2) * 4;  // two unused RoPE tables
  if (!c.tied_embeddings)
    if (auto st = place(plan.size() - 1, "wcls"); !st) return st.err();  // the classifier, when not shared
  if (off != file->size())
    return make_error(path + ": size mismatch: header " + c.describe() + " implies " + std::to_string(off) +
                      " bytes but the file has " + std::to_string(file->size()));
  if (auto st = c.fits_memory(); !st) return make_error(path + ": " + st.message());

  auto slots = allocate_slots(*m);
  const std::string fname = std::filesystem::path(path).filename().string();
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint8_t* p = file->data() + offset[i];
    uint64_t len = slots[i].count() * 4;
    convert_rows(dtype::f32, p, slots[i].type, slots[i].dst, slots[i].rows(), slots[i].cols());
    tensor_record r;
    r.name = slots[i].name;
    r.source_name = source[i];
    r.layer = slots[i].layer;
    r.type = dtype::f32;
    r.shape = slots[i].shape;
    r.file = fname;
    r.offset = offset[i];
    r.length = len;
    r.checksum = checksum64(p, len);
    m->tensors.push_back(std::move(r));
  }
  // Manifest order: by layer, then name, so one layer's tensors are contiguous in the list.
  std::stable_sort(m->tensors.begin(), m->tensors.end(),
                   [](const tensor_record& a, const tensor_record& b) { return a.layer < b.layer; });
  m->files.push_back(fname);
  if (auto st = apply_supernet_file(*m, path); !st) return st.err();
  return model_ptr(std::move(m));
}

}  // namespace strata
