// llama2.c's byte-fallback BPE tokenizer (tok*.bin, or a GGUF's SentencePiece vocabulary):
// encode by greedy highest-score merges.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

class tokenizer {
 public:
  // A llama2.c tok*.bin, or the vocabulary in a GGUF model file's metadata.
  static expected<tokenizer> load(const std::string& path, int vocab_size);
  // From token texts (spaces as spaces, bytes as <0xNN>) and their merge scores; `where` names
  // the source in errors.
  static expected<tokenizer> from_vocab(std::vector<std::string> vocab, std::vector<float> scores,
                                        const std::string& where);

  // BOS first when `bos`; a dummy space prefix like llama2.c (and sentencepiece) when non-empty.
  std::vector<int> encode(const std::string& text, bool bos, bool eos = false) const;
  // The text of `token` following `prev` (a leading space after BOS is dropped; <0xNN> is a byte).
  std::string decode(int prev, int token) const;
  // Text of a token sequence that follows `prev` (default BOS: the usual leading space is dropped).
  std::string decode_all(const std::vector<int>& tokens, int prev = 1) const;
  int vocab_size() const { return int(vocab_.size()); }
  // The longest token's text: a text of N bytes encodes to at least N / max_token_bytes() tokens,
  // so servers can refuse an over-long prompt before encoding it.
  size_t max_token_bytes() const;

 private:
  void merge(std::vector<int>& tokens) const;
  int lookup(const std::string& s) const;
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> index_;
};

// Finds the tokenizer of a model: a GGUF file's own, else tokenizer.bin or tok*.bin in the model's
// directory.
std::string find_tokenizer(const std::string& model_path);

}  // namespace strata
