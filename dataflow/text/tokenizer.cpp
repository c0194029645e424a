#include "dataflow/text/tokenizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <queue>

#include "dataflow/files.hpp"
#include "dataflow/gguf.hpp"

namespace fs = std::filesystem;

namespace strata {

namespace {

// A GGUF's SentencePiece vocabulary (tokenizer.ggml.model "llama"): its tokens with U+2581 as the
// space llama2.c's vocabulary spells out, and their scores.
expected<tokenizer> from_gguf(const std::string& path, int vocab_size) {
  auto g = read_gguf(path);
  if (!g) return g.err();
  auto model = g->find("tokenizer.ggml.model");
  if (!model || !model->is_string()) return make_error(path + ": no tokenizer in the GGUF metadata (tokenizer.ggml.model)");
  if (model->text != "llama")
    return make_error(path + ": tokenizer.ggml.model '" + model->text + "' is not supported (llama: SentencePiece BPE)");
  auto tokens = g->find("tokenizer.ggml.tokens");
  if (!tokens || !tokens->is_array() || tokens->element_type != 8)
    return make_error(path + ": tokenizer.ggml.tokens must be an array of strings");
  if (int64_t(tokens->texts.size()) != vocab_size)
    return make_error(path + ": tokenizer.ggml.tokens has " + std::to_string(tokens->texts.size()) +
                      " tokens, the model " + std::to_string(vocab_size));
  std::vector<float> scores(tokens->texts.size(), 0.0f);
  if (auto sc = g->find("tokenizer.ggml.scores")) {
    if (!sc->is_array() || sc->numbers.size() != scores.size())
      return make_error(path + ": tokenizer.ggml.scores must be an array of one number per token");
    for (size_t i = 0; i < scores.size(); ++i) {
      if (!fits_float(sc->numbers[i]))  // converting it to float would overflow
        return make_error(path + ": tokenizer.ggml.scores[" + std::to_string(i) + "] is not a finite float");
      scores[i] = float(sc->numbers[i]);
    }
  }
  std::vector<std::string> vocab;
  vocab.reserve(tokens->texts.size());
  for (auto& t : tokens->texts) {
    std::string s;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t.compare(i, 3, "\xe2\x96\x81") == 0) {
        s += ' ';
        i += 2;
      } else {
        s += t[i];
      }
    }
    vocab.push_back(std::move(s));
  }
  return tokenizer::from_vocab(std::move(vocab), std::move(scores), path);
}

}  // namespace

expected<tokenizer> tokenizer::from_vocab(std::vector<std::string> vocab, std::vector<float> scores,
                                          const std::string& where) {
  tokenizer t;
  const int vocab_size = int(vocab.size());
  for (size_t i = 0; i < vocab.size(); ++i) {
    if (!std::isfinite(scores[i])) return make_error(where + ": token " + std::to_string(i) + " has a non-finite score");
    t.index_.emplace(vocab[i], int(i));  // first occurrence wins, like llama2.c's sorted lookup
  }
  t.vocab_ = std::move(vocab);
  t.scores_ = std::move(scores);
  if (vocab_size < 259)
    return make_error(where + ": " + std::to_string(vocab_size) + " tokens cannot hold llama2.c's BOS/EOS and 256 byte tokens");
  return t;
}

expected<tokenizer> tokenizer::load(const std::string& path, int vocab_size) {
  if (vocab_size < 1) return make_error(path + ": the model's vocabulary is empty");
  if (looks_like_gguf(path)) return from_gguf(path, vocab_size);
  auto bytes = read_file(path, 1ull << 30, "tokenizer");
  if (!bytes) return bytes.err();
  const std::string& b = *bytes;
  size_t at = 0;
  auto take = [&](void* dst, size_t n) {
    if (b.size() - at < n) return false;
    std::memcpy(dst, b.data() + at, n);
    at += n;
    return true;
  };
  tokenizer t;
  int32_t max_len = 0;
  if (!take(&max_len, 4) || max_len <= 0 || max_len > 4096)
    return make_error(path + ": bad tokenizer header (max token length " + std::to_string(max_len) + ")");
  // Each token needs at least 8 bytes: a vocabulary the file cannot hold fails before reserving.
  if (uint64_t(vocab_size) * 8 > b.size() - at)
    return make_error(path + ": truncated tokenizer: " + std::to_string(b.size()) + " bytes cannot hold " +
                      std::to_string(vocab_size) + " tokens");
  t.vocab_.reserve(size_t(vocab_size));
  for (int i = 0; i < vocab_size; ++i) {
    float score;
    int32_t len;
    if (!take(&score, 4) || !take(&len, 4))
      return make_error(path + ": truncated tokenizer at token " + std::to_string(i) + " of " +
                        std::to_string(vocab_size));
    if (len < 0 || len > max_len)
      return make_error(path + ": token " + std::to_string(i) + " has length " + std::to_string(len) +
                        " (max " + std::to_string(max_len) + ")");
    if (!std::isfinite(score)) return make_error(path + ": token " + std::to_string(i) + " has a non-finite score");
    std::string s(size_t(len), '\0');
    if (!take(s.data(), size_t(len))) return make_error(path + ": truncated tokenizer in token " + std::to_string(i));
    t.scores_.push_back(score);
    t.index_.emplace(s, i);  // first occurrence wins, like llama2.c's sorted lookup
    t.vocab_.push_back(std::move(s));
  }
  if (at != b.size())
    return make_error(path + ": tokenizer has more than the model's " + std::to_string(vocab_size) + " tokens");
  if (vocab_size < 259)
    return make_error(path + ": " + std::to_string(vocab_size) + " tokens cannot hold llama2.c's BOS/EOS and 256 byte tokens");
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
  merge(tokens);
  if (eos) tokens.push_back(2);
  return tokens;
}

// llama2.c merges the adjacent pair with the best score (the leftmost on ties) until none merges,
// rescanning the whole list per merge: O(n^2). The same merges in the same order, O(n log n): a
// heap of candidate pairs over a linked list of symbols, as llama.cpp's SentencePiece tokenizer.
// A heap entry is stale once either of its symbols changed; it is then skipped.
void tokenizer::merge(std::vector<int>& tokens) const {
  const int n = int(tokens.size());
  if (n < 2) return;
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct cand {
    float score;
    int left, right;         // symbol positions (the list keeps positions in text order)
    int left_id, right_id;   // the symbols' tokens when pushed
    int merged;
  };
  auto worse = [](const cand& a, const cand& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;  // best score, then leftmost
  };
  std::priority_queue<cand, std::vector<cand>, decltype(worse)> heap(worse);
  auto consider = [&](int l) {
    if (l < 0) return;
    int r = next[size_t(l)];
    if (r < 0) return;
    int a = tokens[size_t(l)], b = tokens[size_t(r)];
    int id = lookup(vocab_[size_t(a)] + vocab_[size_t(b)]);
    if (id >= 0) heap.push({scores_[size_t(id)], l, r, a, b, id});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    cand c = heap.top();
    heap.pop();
    if (tokens[size_t(c.left)] != c.left_id || next[size_t(c.left)] != c.right ||
        tokens[size_t(c.right)] != c.right_id)
      continue;  // stale: one side merged since
    tokens[size_t(c.left)] = c.merged;
    int after = next[size_t(c.right)];
    next[size_t(c.left)] = after;
    if (after >= 0) prev[size_t(after)] = c.left;
    tokens[size_t(c.right)] = -1;
    next[size_t(c.right)] = -2;
    consider(prev[size_t(c.left)]);
    consider(c.left);
  }
  size_t w = 0;
  for (int i = 0; i >= 0; i = next[size_t(i)]) tokens[w++] = tokens[size_t(i)];
  tokens.resize(w);
}

size_t tokenizer::max_token_bytes() const {
  size_t m = 1;
  for (auto& v : vocab_) m = std::max(m, v.size());
  return m;
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
  if (fs::is_regular_file(model_path, ec) && looks_like_gguf(model_path)) return model_path;
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
