// GGUF files: container, llama metadata, tensor directory and the tokenizer inside, from any bytes.
#include "dataflow/model/model.hpp"
#include "dataflow/text/tokenizer.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = strata::fuzz::write("model.gguf", {reinterpret_cast<const char*>(data), size});
  auto m = strata::load_model(path);
  if (m) (void)(*m)->config.describe();
  auto t = strata::tokenizer::load(path, m ? (*m)->config.vocab_size : 512);
  if (t) (void)t->encode("Once upon a time", true);
  return 0;
}
