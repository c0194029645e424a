#include "dataflow/model/safetensors.hpp"

#include <algorithm>
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
  // A Strata q8 file (save_hf) stores its matrices' q8 rows as U8 bytes and says so here.
  const auto& meta = header.contains("__metadata__") ? header["__metadata__"] : json();
  const bool q8_file = meta.is_object() && meta.contains("strata_weights") && meta["strata_weights"] == "q8";
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") continue;
    auto where = path + ": tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      return make_error(where + ": header entry needs dtype, shape and data_offsets [begin, end]");
    safetensors_entry e;
    e.name = name;
    const auto ds = v["dtype"].get<std::string>();
    auto t = parse_dtype(ds);
    if (ds == "U8" && q8_file) {
      e.type = dtype::q8;  // shape: [rows, bytes per q8 row]; the loader checks it against the config
    } else if (!t || *t == dtype::q8) {
      return make_error(where + ": dtype '" + ds + "' is not supported (F32, F16, BF16" +
                        (ds == "U8" ? "; U8 only in a Strata q8 file, whose __metadata__ has strata_weights = q8)" : ")"));
    } else {
      e.type = *t;
    }
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

dtype safetensors_out::written_as(dtype type) const { return type == dtype::q8 && shape.size() < 2 ? dtype::f32 : type; }

status write_safetensors(const std::string& path, dtype type, const std::vector<safetensors_out>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}, {"writer", "strata"}};
  if (type == dtype::q8) header["__metadata__"]["strata_weights"] = "q8";
  uint64_t off = 0;
  for (auto& t : tensors) {
    const dtype as = t.written_as(type);
    uint64_t len = t.rows() * row_bytes(as, t.cols());
    const char* names[] = {"F32", "F16", "BF16", "U8"};
    auto shape = t.shape;
    if (as == dtype::q8) shape = {int64_t(t.rows()), int64_t(row_bytes(as, t.cols()))};
    header[t.name] = {{"dtype", names[int(as)]}, {"shape", shape}, {"data_offsets", {off, off + len}}};
    off += len;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!fp) return make_error(path + ": cannot create: " + std::strerror(errno));
  uint64_t hlen = h.size();
  bool ok = std::fwrite(&hlen, 8, 1, fp.get()) == 1 && std::fwrite(h.data(), 1, h.size(), fp.get()) == h.size();
  std::vector<uint8_t> buf;
  for (auto& t : tensors) {
    // Converted some rows at a time (about 4 MiB of source): large models need no second full copy.
    const dtype as = t.written_as(type);
    const size_t in = row_bytes(t.type, t.cols()), out = row_bytes(as, t.cols());
    const size_t step = std::max<size_t>(1, (4u << 20) / in);
    for (size_t r = 0; ok && r < t.rows(); r += step) {
      size_t k = std::min(step, t.rows() - r);
      buf.resize(k * out);
      convert_rows(t.type, static_cast<const uint8_t*>(t.data) + r * in, as, buf.data(), k, t.cols());
      ok = std::fwrite(buf.data(), 1, buf.size(), fp.get()) == buf.size();
    }
  }
  if (!ok || std::fflush(fp.get()) != 0) return make_error(path + ": write failed: " + std::strerror(errno));
  return {};
}

}  // namespace strata
