// The flatbuffers model manifest (schemas/manifest.fbs): build, read back and verify.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/model/model.hpp"

namespace strata {

std::vector<uint8_t> build_manifest(const model& m);

// Parses a manifest buffer (verifying the flatbuffer first) back into config and records.
struct manifest_view {
  std::string name;
  source_format format = source_format::llama2c;
  model_config config;
  std::vector<std::string> files;
  std::vector<tensor_record> tensors;
};
expected<manifest_view> read_manifest(const uint8_t* data, size_t size);

// Human-readable table of the manifest.
std::string format_manifest(const manifest_view& m);

// Re-reads every tensor's byte range from the files in `dir` and checks its checksum; the error
// names the first tensor that does not match.
status verify_manifest(const manifest_view& m, const std::string& dir);

}  // namespace strata
