// TOML from operators: topology files and node configs.
#include "dataflow/cluster/node_config.hpp"
#include "dataflow/experiment/topology.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)strata::parse_topology(text, "/tmp", "fuzz.toml");
  (void)strata::parse_node_config(text, "fuzz-node.toml");
  return 0;
}
