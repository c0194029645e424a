// Shared by the libFuzzer targets: inputs that the code under test reads from files are written
// to a per-process scratch directory; the memory budget is capped so that a plausible-looking
// header cannot make a target allocate more than libFuzzer's RSS limit.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/files.hpp"

namespace strata::fuzz {

inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("strata-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    set_memory_budget(256ull << 20);
    return d;
  }();
  return dir;
}

inline std::string write(const std::string& name, std::string_view bytes) {
  auto p = scratch() / name;
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (f) {
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  return p.string();
}

// Splits an input at every "\n--8<--\n": the parts of a multi-file input (seeds are written so).
inline std::vector<std::string_view> parts(const uint8_t* data, size_t size) {
  std::string_view all(reinterpret_cast<const char*>(data), size), sep("\n--8<--\n");
  std::vector<std::string_view> out;
  size_t i = 0;
  for (;;) {
    size_t j = all.find(sep, i);
    if (j == std::string_view::npos) break;
    out.push_back(all.substr(i, j - i));
    i = j + sep.size();
  }
  out.push_back(all.substr(i));
  return out;
}

}  // namespace strata::fuzz
