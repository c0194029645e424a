// The llama2.c tokenizer file, and encoding text with whatever it loaded: input = text, then the
// tokenizer file (parts split as fuzz_util.hpp says).
#include "dataflow/text/tokenizer.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto p = strata::fuzz::parts(data, size);
  if (p.size() < 2) return 0;
  auto path = strata::fuzz::write("tok.bin", p[1]);
  for (int vocab : {259, 512}) {
    auto t = strata::tokenizer::load(path, vocab);
    if (!t) continue;
    auto ids = t->encode(std::string(p[0]), true, true);
    for (int id : ids)
      if (id < 0 || id >= t->vocab_size()) __builtin_trap();  // every id must be a token
    (void)t->decode_all(ids);
  }
  return 0;
}
