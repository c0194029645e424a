// A Hugging Face directory: config.json, model.safetensors.index.json (empty part: none) and one
// safetensors file, as three parts of the input.
#include <filesystem>

#include "dataflow/model/model.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto p = strata::fuzz::parts(data, size);
  if (p.size() < 3) return 0;
  namespace fs = std::filesystem;
  auto dir = strata::fuzz::scratch() / "hf";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  strata::fuzz::write("hf/config.json", p[0]);
  if (!p[1].empty()) strata::fuzz::write("hf/model.safetensors.index.json", p[1]);
  strata::fuzz::write("hf/model.safetensors", p[2]);
  auto m = strata::load_model(dir.string());
  if (m) (void)(*m)->config.describe();
  return 0;
}
