#include "dataflow/tokenizer.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

namespace fs = std::filesystem;

namespace strata {

expected<tokenizer> tokenizer::load(const std::string& path, int vocab_size) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return make_error(path + ": cannot open tokenizer: " + std::strerror(errno));
  tokenizer t;
  int32_t max_len = 0;
  if (std::fread(&max_len, 4, 1, f.get()) != 1 || max_len <= 0 || max_len > 4096)
    return make_error(path + ": bad tokenizer header");
  t.vocab_.reserve(size_t(vocab_size));
  for (int i = 0; i < vocab_size; ++i) {
    float score;
    int32_t len;
    if (std::fread(&score, 4, 1, f.get()) != 1 || std::fread(&len, 4, 1, f.get()) != 1)
      return make_error(path + ": truncated tokenizer at token " + std::to_string(i) + " of " +
                        std::to_string(vocab_size));
    if (len < 0 || len > max_len)
      return make_error(path + ": token " + std::to_string(i) + " has length " + std::to_string(len) +
                        " (max " + std::to_string(max_len) + ")");
    std::string s(size_t(len), '\0');
    if (len > 0 && std::fread(s.data(), 1, size_t(len), f.get()) != size_t(len))
      return make_error(path + ": truncated tokenizer in token " + std::to_string(i));
    t.scores_.push_back(score);
    t.index_.emplace(s, i);  // first occurrence wins, like llama2.c's sorted lookup
    t.vocab_.push_back(std::move(s));
  }
  if (std::fgetc(f.get()) != EOF)
    return make_error(path + ": tokenizer has more than the model's " + std::to_string(vocab_size) + " tokens");
  return t;
}

int tokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int> tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  std::vector<int> tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) {
    int sp = lookup(" ");
    if (sp >= 0) tokens.push_back(sp);
  }
  // Code points first, byte fallback (<0xNN> is id byte+3) for those not in the vocabulary.
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0x80) != 0) {
      while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    }
    auto cp = text.substr(i, n);
    int id = lookup(cp);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (unsigned char b : cp) tokens.push_back(int(b) + 3);
    }
    i += n;
  }
  // Merge the adjacent pair with the best score until none merges.
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      int id = lookup(vocab_[size_t(tokens[i])] + vocab_[size_t(tokens[i + 1])]);
      if (id >= 0 && scores_[size_t(id)] > best) {
        best = scores_[size_t(id)];
        best_id = id;
        best_i = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_i] = best_id;
    tokens.erase(tokens.begin() + long(best_i) + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

std::string tokenizer::decode(int prev, int token) const {
  if (token < 0 || token >= vocab_size()) return {};
  const std::string& piece = vocab_[size_t(token)];
  unsigned int byte;
  if (piece.size() == 6 && std::sscanf(piece.c_str(), "<0x%02X>", &byte) == 1) return std::string(1, char(byte));
  if (prev == 1 && !piece.empty() && piece[0] == ' ') return piece.substr(1);
  return piece;
}

std::string tokenizer::decode_all(const std::vector<int>& tokens, int prev) const {
  std::string out;
  for (int t : tokens) {
    out += decode(prev, t);
    prev = t;
  }
  return out;
}

std::string find_tokenizer(const std::string& model_path) {
  std::error_code ec;
  fs::path dir = fs::is_directory(model_path, ec) ? fs::path(model_path) : fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  if (fs::exists(dir / "tokenizer.bin", ec)) return (dir / "tokenizer.bin").string();
  for (auto& e : fs::directory_iterator(dir, ec)) {
    auto n = e.path().filename().string();
    if (n.rfind("tok", 0) == 0 && e.path().extension() == ".bin") return e.path().string();
  }
  return {};
}

}  // namespace strata
