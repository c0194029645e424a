#include "dataflow/files.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace strata {

namespace {

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

std::atomic<uint64_t> budget_override{0};

}  // namespace

expected<int> open_regular(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return make_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return make_error(path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(path + ": " + kind_of(st.st_mode) + ", not a regular file");
  }
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

expected<std::string> confine_path(const std::string& path, const std::vector<std::string>& roots) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto p = fs::canonical(path, ec);
  if (ec) return make_error(path + ": " + ec.message());
  std::string listed;
  for (auto& r : roots) {
    listed += (listed.empty() ? "" : ", ") + r;
    auto root = fs::canonical(r, ec);
    if (ec) continue;
    if (std::mismatch(root.begin(), root.end(), p.begin(), p.end()).first == root.end()) return p.string();
  }
  return make_error(path + " is outside the model roots (" + (listed.empty() ? "none configured" : listed) + ")");
}

status write_file(const std::string& path, const std::string& text, const char* what) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error(path + ": cannot write " + what + ": " + std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  int err = errno;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) return make_error(path + ": cannot write " + what + ": " + std::strerror(err ? err : errno));
  return {};
}

expected<std::string> read_file(const std::string& path, uint64_t max_bytes, const char* what) {
  auto fd = open_regular(path);
  if (!fd) return make_error(std::string(what) + " " + fd.message());
  struct stat st {};
  ::fstat(*fd, &st);
  if (uint64_t(st.st_size) > max_bytes) {
    ::close(*fd);
    return make_error(std::string(what) + " " + path + ": " + std::to_string(st.st_size) + " bytes, more than the " +
                      std::to_string(max_bytes) + " accepted");
  }
  std::string out(size_t(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(*fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the file shrank while read: what is there
    got += size_t(n);
  }
  ::close(*fd);
  out.resize(got);
  return out;
}

expected<mapped_file> mapped_file::open(const std::string& path) {
  auto fd = open_regular(path);
  if (!fd) return fd.err();
  struct stat st {};
  ::fstat(*fd, &st);
  mapped_file f;
  f.path_ = path;
  f.size_ = size_t(st.st_size);
  if (f.size_ > 0) {
    void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, *fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(*fd);
      return make_error(path + ": mmap failed: " + std::strerror(e));
    }
    f.data_ = static_cast<const uint8_t*>(p);
  }
  ::close(*fd);
  return f;
}

mapped_file::mapped_file(mapped_file&& o) noexcept : data_(o.data_), size_(o.size_), path_(std::move(o.path_)) {
  o.data_ = nullptr;
  o.size_ = 0;
}

mapped_file& mapped_file::operator=(mapped_file&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = o.data_;
    size_ = o.size_;
    path_ = std::move(o.path_);
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

mapped_file::~mapped_file() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

uint64_t system_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : (uint64_t(8) << 30);
}

uint64_t memory_budget() {
  if (uint64_t b = budget_override.load()) return b;
  if (const char* env = std::getenv("STRATA_MAX_MEMORY"))
    if (auto b = parse_bytes(env); b && *b > 0) return *b;
  return system_memory_bytes();
}

void set_memory_budget(uint64_t bytes) { budget_override = bytes; }

expected<uint64_t> parse_bytes(const std::string& s) {
  auto bad = [&] { return make_error("expected a size in bytes such as 512M or 12G, got '" + s + "'"); };
  if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '.')) return bad();
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || !std::isfinite(v) || v < 0) return bad();
  std::string unit(end);
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (!unit.empty() && unit.back() == 'i') unit.pop_back();
  double mult = 1;
  if (unit == "K" || unit == "k") mult = 1024.0;
  else if (unit == "M" || unit == "m") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "g") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "t") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (!unit.empty()) return bad();
  double b = v * mult;
  if (!(b < 1.8e19)) return bad();
  return uint64_t(b);
}

std::string format_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 6) v /= 1024, ++u;
  char b[32];
  std::snprintf(b, sizeof b, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return b;
}

std::string shared_data_dir() {
  const char* e = std::getenv("STRATA_DATA_DIR");
  return e && *e ? e : "../shared/data";
}

std::string default_model_dir() { return shared_data_dir() + "/models/stories260K"; }

std::string with_data_hint(const std::string& path, const std::string& error) {
  if (path != default_model_dir()) return error;
  return error + " (the shared data is read from $STRATA_DATA_DIR, else ../shared/data from the working directory: "
                 "run from the checkout with ../shared beside it, set STRATA_DATA_DIR, or name a model)";
}

}  // namespace strata
