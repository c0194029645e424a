#include "dataflow/model/safetensors.hpp"

#include <cstdio>
#include <cstring>
#include <memory>
#include <climits>
#include <nlohmann/json.hpp>

#include "dataflow/json_fields.hpp"

namespace strata {

using json = nlohmann::json;

expected<safetensors_file> read_safetensors(const std::string& path) {
  auto f = mapped_file::open(path);
  if (!f) return f.err();
  if (f->size() < 8) return make_error(path + ": truncated safetensors file: " + std::to_string(f->size()) + " bytes");
  uint64_t hlen;
  std::memcpy(&hlen, f->data(), 8);
  if (hlen > 100'000'000 || 8 + hlen > f->size())
    return make_error(path + ": bad safetensors header length " + std::to_string(hlen) + " (file has " +
                      std::to_string(f->size()) + " bytes)");
  auto header = json::parse(f->data() + 8, f->data() + 8 + hlen, nullptr, false);
  if (header.is_discarded() || !header.is_object())
    return make_error(path + ": safetensors header is not a JSON object");
  safetensors_file out;
  const uint64_t base = 8 + hlen;
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") continue;
    auto where = path + ": tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      return make_error(where + ": header entry needs dtype, shape and data_offsets [begin, end]");
    safetensors_entry e;
    e.name = name;
    auto t = parse_dtype(v["dtype"].get<std::string>());
    if (!t) return make_error(where + ": " + t.message());
    e.type = *t;
    if (v["shape"].size() > 8) return make_error(where + ": shape has " + std::to_string(v["shape"].size()) + " dimensions");
    // The byte count is checked for overflow: a shape whose product wraps could otherwise pass
    // for a small tensor.
    uint64_t bytes = dtype_size(e.type);
    for (auto& d : v["shape"]) {
      int64_t x = 0;
      if (auto st = json_fields::integer_value(d, where + ": a shape dimension", x, 0, INT64_MAX); !st) return st.err();
      e.shape.push_back(x);
      if (!mul_ok(bytes, uint64_t(x), bytes))
        return make_error(where + ": shape " + shape_string(e.shape) + " overflows 64-bit byte counts");
    }
    auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return make_error(where + ": data_offsets must be non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (end < b) return make_error(where + ": data_offsets end before they begin");
    if (end - b != bytes)
      return make_error(where + ": " + std::to_string(end - b) + " bytes for shape " + shape_string(e.shape) +
                        " of " + to_string(e.type) + " (expected " + std::to_string(bytes) + ")");
    if (end > f->size() - base)
      return make_error(where + ": truncated: needs bytes up to " + std::to_string(base + end) +
                        " but the file has " + std::to_string(f->size()));
    e.offset = base + b;
    e.length = end - b;
    out.entries.push_back(std::move(e));
  }
  out.file = std::move(*f);
  return out;
}

status write_safetensors(const std::string& path, dtype type, const std::vector<safetensors_out>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}, {"writer", "strata"}};
  uint64_t off = 0;
  for (auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= uint64_t(d);
    uint64_t len = n * dtype_size(type);
    std::string dt = type == dtype::f32 ? "F32" : type == dtype::f16 ? "F16" : "BF16";
    header[t.name] = {{"dtype", dt}, {"shape", t.shape}, {"data_offsets", {off, off + len}}};
    off += len;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!fp) return make_error(path + ": cannot create: " + std::strerror(errno));
  uint64_t hlen = h.size();
  bool ok = std::fwrite(&hlen, 8, 1, fp.get()) == 1 && std::fwrite(h.data(), 1, h.size(), fp.get()) == h.size();
  std::vector<uint8_t> buf;
  const size_t block = 1 << 20;  // convert in blocks: large models need no second full copy
  for (auto& t : tensors) {
    size_t n = 1;
    for (auto d : t.shape) n *= size_t(d);
    for (size_t i = 0; ok && i < n; i += block) {
      size_t k = std::min(block, n - i);
      buf.resize(k * dtype_size(type));
      convert_from_f32(type, t.data + i, buf.data(), k);
      ok = std::fwrite(buf.data(), 1, buf.size(), fp.get()) == buf.size();
    }
  }
  if (!ok || std::fflush(fp.get()) != 0) return make_error(path + ": write failed: " + std::strerror(errno));
  return {};
}

}  // namespace strata
