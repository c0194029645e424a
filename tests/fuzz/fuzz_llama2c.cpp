// llama2.c checkpoints: header and weights layout, from any bytes.
#include "dataflow/model/model.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = strata::fuzz::write("ckpt.bin", {reinterpret_cast<const char*>(data), size});
  auto m = strata::load_model(path);
  if (m) (void)(*m)->config.describe();
  return 0;
}
