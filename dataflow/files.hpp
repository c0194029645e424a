// Reading files named by outside parties (models, tokenizers, traces, configs) without trusting
// them: only regular files are opened (a FIFO or device would block or never end), sizes are
// checked before anything is read, and sizes derived from file contents are checked for overflow
// and against a memory budget before they are allocated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

// Opens `path` for reading if it is a regular file (never blocking on a FIFO); the descriptor, or
// "PATH: not a regular file (a fifo)" and the like.
expected<int> open_regular(const std::string& path);

// The whole of a regular file of at most `max_bytes` bytes; `what` names it in errors
// ("trace", "node config").
expected<std::string> read_file(const std::string& path, uint64_t max_bytes, const char* what);

// Writes `text` to `path` (replacing it); "PATH: cannot write WHAT: reason" when it fails.
status write_file(const std::string& path, const std::string& text, const char* what);

// A read-only memory-mapped regular file. Mapping instead of reading keeps loading of large
// checkpoints zero-copy until conversion.
class mapped_file {
 public:
  static expected<mapped_file> open(const std::string& path);
  mapped_file() = default;
  mapped_file(mapped_file&& other) noexcept;
  mapped_file& operator=(mapped_file&& other) noexcept;
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// `path` with symlinks and ".." resolved, if that lies under one of `roots` (each resolved too);
// otherwise an error naming the path and the roots. For paths a remote party names.
expected<std::string> confine_path(const std::string& path, const std::vector<std::string>& roots);

// Where the shared real data lives (the stories260K model, traces): $STRATA_DATA_DIR, else
// ../shared/data from the working directory (a checkout with ../shared beside it).
std::string shared_data_dir();
// The default model of the demo and the example app files: shared_data_dir()/models/stories260K.
std::string default_model_dir();
// An error loading `path` that the default model path explains: how to point at the data.
std::string with_data_hint(const std::string& path, const std::string& error);

// Physical memory of this machine in bytes.
uint64_t system_memory_bytes();

// The memory a process may commit to data it was handed (model weights): set by --max-memory,
// else STRATA_MAX_MEMORY (bytes, or with a K/M/G/T suffix), else the machine's physical memory.
uint64_t memory_budget();
void set_memory_budget(uint64_t bytes);  // 0: back to the default

// "12G", "512M", "4096" -> bytes; an error naming the value otherwise.
expected<uint64_t> parse_bytes(const std::string& s);
std::string format_bytes(uint64_t n);  // "1.50 GiB"

// a * b and a + b, or false on 64-bit overflow.
inline bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
inline bool add_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

}  // namespace strata
