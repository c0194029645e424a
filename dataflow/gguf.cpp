#include "dataflow/gguf.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace strata {

const char* ggml_type_name(uint32_t t) {
  static const char* names[] = {"F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0",    "Q5_1",   "Q8_0",
                                "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",    "IQ2_XXS", "IQ2_XS",
                                "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32",
                                "I64", "F64", "IQ1_M", "BF16"};
  return t < std::size(names) ? names[t] : "unknown";
}

bool looks_like_gguf(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;  // a FIFO would block the open
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

namespace {

// A cursor over the mapped bytes that never reads past the end.
struct reader {
  const uint8_t* p;
  size_t size, at = 0;
  std::string where;
  template <class T>
  status take(T& v, const char* what) {
    if (size - at < sizeof v) return make_error(where + ": truncated in " + what + " at byte " + std::to_string(at));
    std::memcpy(&v, p + at, sizeof v);
    at += sizeof v;
    return {};
  }
  status string(std::string& s, const char* what) {
    uint64_t n = 0;
    if (auto st = take(n, what); !st) return st;
    if (n > size - at)
      return make_error(where + ": " + what + " of " + std::to_string(n) + " bytes at byte " + std::to_string(at) +
                        " runs past the end of the file (" + std::to_string(size) + " bytes)");
    s.assign(reinterpret_cast<const char*>(p + at), size_t(n));
    at += size_t(n);
    return {};
  }
};

constexpr uint32_t t_string = 8, t_array = 9;
// Bytes of a scalar value type, 0 for string/array/unknown.
size_t scalar_bytes(uint32_t t) {
  static const size_t b[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return t < std::size(b) ? b[t] : 0;
}

status scalar(reader& r, uint32_t t, double& out, const char* what) {
  switch (t) {
#define STRATA_GGUF_CASE(code, type)                  \
  case code: {                                        \
    type v;                                           \
    if (auto st = r.take(v, what); !st) return st;    \
    out = double(v);                                  \
    return {};                                        \
  }
    STRATA_GGUF_CASE(0, uint8_t)
    STRATA_GGUF_CASE(1, int8_t)
    STRATA_GGUF_CASE(2, uint16_t)
    STRATA_GGUF_CASE(3, int16_t)
    STRATA_GGUF_CASE(4, uint32_t)
    STRATA_GGUF_CASE(5, int32_t)
    STRATA_GGUF_CASE(6, float)
    STRATA_GGUF_CASE(7, uint8_t)  // bool
    STRATA_GGUF_CASE(10, uint64_t)
    STRATA_GGUF_CASE(11, int64_t)
    STRATA_GGUF_CASE(12, double)
#undef STRATA_GGUF_CASE
  }
  return make_error(r.where + ": unknown value type " + std::to_string(t) + " in " + what);
}

// Bytes per row of `cols` values of a type Strata computes; 0 for the others.
uint64_t type_row_bytes(uint32_t t, uint64_t cols) {
  switch (ggml_type(t)) {
    case ggml_type::f32: return cols * 4;
    case ggml_type::f16:
    case ggml_type::bf16: return cols * 2;
    case ggml_type::q8_0: return cols / 32 * 34;
  }
  return 0;
}

}  // namespace

expected<gguf_file> read_gguf(const std::string& path) {
  auto f = mapped_file::open(path);
  if (!f) return f.err();
  gguf_file out;
  reader r{f->data(), f->size(), 0, path};
  char magic[4];
  if (auto st = r.take(magic, "the magic"); !st) return st.err();
  if (std::memcmp(magic, "GGUF", 4) != 0) return make_error(path + ": not a GGUF file (no 'GGUF' magic)");
  if (auto st = r.take(out.version, "the version"); !st) return st.err();
  if (out.version != 2 && out.version != 3)
    return make_error(path + ": GGUF version " + std::to_string(out.version) + " is not supported (2 or 3)");
  uint64_t n_tensors = 0, n_kv = 0;
  if (auto st = r.take(n_tensors, "the tensor count"); !st) return st.err();
  if (auto st = r.take(n_kv, "the metadata count"); !st) return st.err();
  // Every key/value takes at least 12 bytes and every tensor info 24: counts the file cannot hold
  // fail before anything is reserved for them.
  if (n_kv > (r.size - r.at) / 12 || n_tensors > (r.size - r.at) / 24)
    return make_error(path + ": header claims " + std::to_string(n_kv) + " metadata entries and " +
                      std::to_string(n_tensors) + " tensors, more than its " + std::to_string(r.size) + " bytes hold");
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    if (auto st = r.string(key, "a metadata key"); !st) return st.err();
    const std::string what = "metadata '" + key + "'";
    gguf_value v;
    if (auto st = r.take(v.type, what.c_str()); !st) return st.err();
    if (v.type == t_string) {
      if (auto st = r.string(v.text, what.c_str()); !st) return st.err();
    } else if (v.type == t_array) {
      uint64_t n = 0;
      if (auto st = r.take(v.element_type, what.c_str()); !st) return st.err();
      if (auto st = r.take(n, what.c_str()); !st) return st.err();
      const size_t eb = v.element_type == t_string ? 8 : scalar_bytes(v.element_type);
      if (eb == 0)
        return make_error(path + ": " + what + ": arrays of value type " + std::to_string(v.element_type) +
                          " are not supported");
      if (n > (r.size - r.at) / eb)
        return make_error(path + ": " + what + ": " + std::to_string(n) + " elements run past the end of the file");
      for (uint64_t k = 0; k < n; ++k) {
        if (v.element_type == t_string) {
          v.texts.emplace_back();
          if (auto st = r.string(v.texts.back(), what.c_str()); !st) return st.err();
        } else {
          double x;
          if (auto st = scalar(r, v.element_type, x, what.c_str()); !st) return st.err();
          v.numbers.push_back(x);
        }
      }
    } else if (auto st = scalar(r, v.type, v.number, what.c_str()); !st) {
      return st.err();
    }
    if (!out.meta.emplace(key, std::move(v)).second) return make_error(path + ": " + what + " appears twice");
  }
  uint64_t align = 32;
  if (auto a = out.find("general.alignment")) {
    if (!a->is_number() || !(a->number >= 1 && a->number <= 65536) || a->number != std::floor(a->number) ||
        (uint64_t(a->number) & (uint64_t(a->number) - 1)))  // NaN fails before the casts
      return make_error(path + ": general.alignment must be a power of two up to 65536");
    align = uint64_t(a->number);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    gguf_tensor t;
    if (auto st = r.string(t.name, "a tensor name"); !st) return st.err();
    const std::string where = path + ": tensor '" + t.name + "'";
    uint32_t n_dims = 0;
    if (auto st = r.take(n_dims, "a tensor's dimension count"); !st) return st.err();
    if (n_dims < 1 || n_dims > 4) return make_error(where + ": " + std::to_string(n_dims) + " dimensions (1 to 4)");
    std::vector<int64_t> dims(n_dims);
    uint64_t count = 1;
    for (auto& d : dims) {
      uint64_t x = 0;
      if (auto st = r.take(x, "a tensor dimension"); !st) return st.err();
      if (x == 0 || x > (uint64_t(1) << 40) || !mul_ok(count, x, count))
        return make_error(where + ": dimension " + std::to_string(x) + " is out of range");
      d = int64_t(x);
    }
    t.shape.assign(dims.rbegin(), dims.rend());
    if (auto st = r.take(t.type, "a tensor type"); !st) return st.err();
    uint64_t off = 0;
    if (auto st = r.take(off, "a tensor offset"); !st) return st.err();
    const uint64_t cols = uint64_t(dims[0]), rows = count / cols;
    const uint64_t rb = type_row_bytes(t.type, cols);
    if (rb == 0 && t.type != uint32_t(ggml_type::q8_0))
      return make_error(where + ": ggml type " + ggml_type_name(t.type) + " (" + std::to_string(t.type) +
                        ") is not one Strata computes (F32, F16, BF16, Q8_0)");
    if (t.type == uint32_t(ggml_type::q8_0) && cols % 32 != 0)
      return make_error(where + ": Q8_0 rows of " + std::to_string(cols) + " values are not whole 32-value blocks");
    if (!mul_ok(rows, rb, t.length)) return make_error(where + ": its byte size overflows");
    if (off % align != 0)
      return make_error(where + ": offset " + std::to_string(off) + " is not a multiple of the alignment " +
                        std::to_string(align));
    t.offset = off;
    out.tensors.push_back(std::move(t));
  }
  const uint64_t data = (r.at + align - 1) / align * align;
  for (auto& t : out.tensors) {
    if (t.offset > r.size || data > r.size - t.offset || t.length > r.size - data - t.offset)
      return make_error(path + ": tensor '" + t.name + "': bytes [" + std::to_string(t.offset) + ", +" +
                        std::to_string(t.length) + ") of the data section lie beyond the end of the file (" +
                        std::to_string(r.size) + " bytes)");
    t.offset += data;
  }
  out.file = std::move(*f);
  return out;
}

}  // namespace strata
