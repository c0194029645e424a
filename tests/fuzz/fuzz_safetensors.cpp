// The safetensors container: header length, JSON header, dtype/shape/offset checks.
#include "dataflow/model/safetensors.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = strata::fuzz::write("model.safetensors", {reinterpret_cast<const char*>(data), size});
  auto st = strata::read_safetensors(path);
  if (st)
    for (auto& e : st->entries)
      if (e.offset + e.length > st->file.size()) __builtin_trap();  // accepted ranges lie in the file
  return 0;
}
