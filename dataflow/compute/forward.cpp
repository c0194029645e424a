#include "dataflow/compute/forward.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "dataflow/compute/kernels.hpp"
#include "dataflow/compute/scratch.hpp"
#include "dataflow/thread_pool.hpp"

namespace strata {

kv_cache::kv_cache(const model_config& c, int layer_begin, int layer_end)
    : c_(c), begin_(layer_begin), end_(layer_end) {}

int kv_cache::length(seq_id s) const {
  auto it = seqs_.find(s);
  return it == seqs_.end() ? 0 : it->second.length;
}

void kv_cache::release(seq_id s) { seqs_.erase(s); }

size_t kv_cache::bytes() const {
  size_t n = 0;
  for (auto& [_, e] : seqs_)
    for (size_t l = 0; l < e.k.size(); ++l) n += (e.k[l].size() + e.v[l].size()) * sizeof(float);
  return n;
}

kv_cache::entry& kv_cache::prepare(seq_id s, int needed) {
  auto& e = seqs_[s];
  if (e.k.empty()) {
    e.k.resize(size_t(end_ - begin_));
    e.v.resize(size_t(end_ - begin_));
  }
  if (needed > e.capacity) {
    // Grow geometrically (from 64 positions) up to the context length.
    int cap = std::max(64, e.capacity);
    while (cap < needed) cap *= 2;
    cap = std::min(cap, c_.seq_len);
    for (size_t l = 0; l < e.k.size(); ++l) {  // the layers the sequence runs (see touch)
      if (e.k[l].empty()) continue;
      e.k[l].resize(size_t(cap) * size_t(c_.kv_dim()));
      e.v[l].resize(size_t(cap) * size_t(c_.kv_dim()));
    }
    e.capacity = cap;
  }
  return e;
}

void kv_cache::touch(entry& e, size_t layer_index) {
  if (!e.k[layer_index].empty()) return;
  e.k[layer_index].resize(size_t(e.capacity) * size_t(c_.kv_dim()));
  e.v[layer_index].resize(size_t(e.capacity) * size_t(c_.kv_dim()));
}

status kv_cache::covers(int begin, int end) const {
  if (begin < begin_ || end > end_ || begin >= end)
    return make_error("layers [" + std::to_string(begin) + "," + std::to_string(end) + ") are not all in this cache's [" +
                      std::to_string(begin_) + "," + std::to_string(end_) + ")");
  return {};
}

expected<kv_slice> kv_cache::export_seq(seq_id seq, int begin, int end) const {
  if (auto st = covers(begin, end); !st) return st.err();
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return make_error("sequence " + std::to_string(seq) + " has no cache here");
  const auto& e = it->second;
  kv_slice x;
  x.seq = seq;
  x.begin = begin;
  x.end = end;
  x.length = e.length;
  x.kv_dim = c_.kv_dim();
  size_t n = size_t(e.length) * size_t(x.kv_dim);
  for (int l = begin; l < end; ++l) {
    const auto& k = e.k[size_t(l - begin_)];
    const auto& v = e.v[size_t(l - begin_)];
    if (k.empty()) {  // a layer the sequence's subnet skips: zeros, never read
      x.k.resize(x.k.size() + n, 0.0f);
      x.v.resize(x.v.size() + n, 0.0f);
      continue;
    }
    x.k.insert(x.k.end(), k.begin(), k.begin() + long(n));
    x.v.insert(x.v.end(), v.begin(), v.begin() + long(n));
  }
  return x;
}

status kv_cache::import_seq(const kv_slice& x) {
  if (auto st = covers(x.begin, x.end); !st) return st;
  size_t n = size_t(x.length) * size_t(c_.kv_dim());
  if (x.kv_dim != c_.kv_dim() || x.length < 0 || x.length > c_.seq_len || x.k.size() != n * size_t(x.end - x.begin) ||
      x.v.size() != x.k.size())
    return make_error("malformed KV slice for sequence " + std::to_string(x.seq) + " (" + std::to_string(x.length) +
                      " positions, kv_dim " + std::to_string(x.kv_dim) + ", " + std::to_string(x.k.size()) +
                      " keys)");
  auto it = seqs_.find(x.seq);
  if (it != seqs_.end() && it->second.length != x.length)
    return make_error("sequence " + std::to_string(x.seq) + " holds " + std::to_string(it->second.length) +
                      " positions here, the slice " + std::to_string(x.length));
  auto& e = prepare(x.seq, std::max(1, x.length));
  for (int l = x.begin; l < x.end; ++l) {
    touch(e, size_t(l - begin_));
    size_t off = size_t(l - x.begin) * n;
    std::copy(x.k.begin() + long(off), x.k.begin() + long(off + n), e.k[size_t(l - begin_)].begin());
    std::copy(x.v.begin() + long(off), x.v.begin() + long(off + n), e.v[size_t(l - begin_)].begin());
  }
  e.length = x.length;
  return {};
}

namespace {

// Rows grouped by one width (first appearance order; key 0 is the whole layer's).
std::vector<std::pair<int, std::vector<int>>> group_rows(int rows, const row_width* width, int32_t row_width::*key) {
  std::vector<std::pair<int, std::vector<int>>> groups;
  for (int r = 0; r < rows; ++r) {
    int k = width ? width[r].*key : 0;
    auto it = std::find_if(groups.begin(), groups.end(), [k](auto& g) { return g.first == k; });
    if (it == groups.end()) it = groups.insert(groups.end(), {k, {}});
    it->second.push_back(r);
  }
  return groups;
}

// The activation buffers of forward_layer (compute/scratch.hpp), one tag each.
struct xb_buf;
struct gathered_buf;
struct tmp_buf;
struct qkv_buf;
struct att_buf;
struct h13_buf;
struct h_buf;
struct scores_buf;
template <class Tag>
float* scratch(size_t n) {
  return thread_buffer<float, Tag>(n);
}

// fn(i) for each i < n, over the pool in chunks of 16 or more (inline for up to 16: decode).
template <class Fn>
void each_row(int n, Fn&& fn) {
  default_pool().parallel_for(size_t(n), 16, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) fn(int(i));
  });
}

// out = rmsnorm(x) * w for each of `rows` rows of n values.
void norm_rows(float* out, const float* x, const float* w, int rows, int n, float eps) {
  each_row(rows, [&](int r) { rmsnorm(out + size_t(r) * n, x + size_t(r) * n, w, 1, n, eps); });
}

// x[idx[i]] += t[i] for the n rows of t (d values each).
void add_rows(float* x, const float* t, const std::vector<int>& idx, int d) {
  each_row(int(idx.size()), [&](int i) {
    float* xr = x + size_t(idx[size_t(i)]) * d;
    const float* tr = t + size_t(i) * d;
    for (int j = 0; j < d; ++j) xr[j] += tr[j];
  });
}

// The rows `idx` of a [rows, n] matrix, contiguous: m itself when idx is every row in order.
const float* gather(const float* m, int n, const std::vector<int>& idx, int rows) {
  if (int(idx.size()) == rows) return m;
  float* buf = scratch<gathered_buf>(idx.size() * size_t(n));
  for (size_t i = 0; i < idx.size(); ++i) std::copy_n(m + size_t(idx[i]) * n, n, buf + i * size_t(n));
  return buf;
}

}  // namespace

status forward_layer(const model_config& c, const layer_weights& w, int layer, kv_cache& kv, const seq_id* seqs,
                     const int* pos, int rows, float* x, const row_width* width) {
  if (layer < kv.begin_ || layer >= kv.end_)
    return make_error("layer " + std::to_string(layer) + " is outside this cache's layers [" +
                      std::to_string(kv.begin_) + ", " + std::to_string(kv.end_) + ")");
  const int d = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), hd = c.head_dim, hid = c.hidden_dim;
  const size_t li = size_t(layer - kv.begin_);
  for (int r = 0; width && r < rows; ++r)
    if (width[r].ffn < 0 || width[r].ffn > hid || width[r].kv_heads < 0 || width[r].kv_heads > c.n_kv_heads)
      return make_error("row " + std::to_string(r) + ": width (FFN " + std::to_string(width[r].ffn) + ", KV heads " +
                        std::to_string(width[r].kv_heads) + ") outside the layer's (" + std::to_string(hid) + ", " +
                        std::to_string(c.n_kv_heads) + ")");

  // Check positions and size every sequence's cache before any parallel work touches it.
  std::vector<kv_cache::entry*> entry_of(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    if (pos[r] < 0 || pos[r] >= c.seq_len)
      return make_error("position " + std::to_string(pos[r]) + " outside the context of " +
                        std::to_string(c.seq_len));
    bool first = r == 0 || seqs[r - 1] != seqs[r];
    int have = first ? kv.length(seqs[r]) : pos[r - 1] + 1;
    if (pos[r] > have || (!first && pos[r] != pos[r - 1] + 1))
      return make_error("sequence " + std::to_string(seqs[r]) + ": position " + std::to_string(pos[r]) +
                        " does not continue the " + std::to_string(have) + " cached positions");
    auto& e = kv.prepare(seqs[r], pos[r] + 1);
    kv.touch(e, li);
    entry_of[size_t(r)] = &e;
  }

  // Rows of one width share each GEMM; a row's bits do not depend on who it shares it with.
  float* xb = scratch<xb_buf>(size_t(rows) * d);
  norm_rows(xb, x, w.att_norm.data(), rows, d, c.norm_eps);
  const int group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  for (auto& g : group_rows(rows, width, &row_width::kv_heads)) {
    const auto& idx = g.second;  // a plain reference: the lambda below captures it (clang 14: no bindings)
    const int n = int(idx.size()), kvh = g.first ? g.first : c.n_kv_heads, nq = kvh * group;
    const int qd = nq * hd, kd = kvh * hd, stride = qd + 2 * kd;
    const float* gx = gather(xb, d, idx, rows);
    float* qkv = scratch<qkv_buf>(size_t(n) * stride);
    float* att = scratch<att_buf>(size_t(n) * qd);
    if (kvh == c.n_kv_heads) {
      matmul(qkv, gx, matrix_of(w.wqkv), n, d, stride);
    } else {  // the prefix rows of wq, wk and wv
      matmul(qkv, gx, matrix_of(w.wqkv), n, d, qd, stride);
      matmul(qkv + qd, gx, matrix_of(w.wqkv).from_row(size_t(q_dim)), n, d, kd, stride);
      matmul(qkv + qd + kd, gx, matrix_of(w.wqkv).from_row(size_t(q_dim + kv_dim)), n, d, kd, stride);
    }
    each_row(n, [&](int i) {  // rows write disjoint cache positions
      const int r = idx[size_t(i)];
      float* q = qkv + size_t(i) * stride;
      rope(q, nq, hd, pos[r], c.rope_theta, c.rope);
      rope(q + qd, kvh, hd, pos[r], c.rope_theta, c.rope);
      auto& e = *entry_of[size_t(r)];
      std::copy(q + qd, q + qd + kd, e.k[li].data() + size_t(pos[r]) * kv_dim);
      std::copy(q + qd + kd, q + stride, e.v[li].data() + size_t(pos[r]) * kv_dim);
    });
    for (int i = 0; i < n; ++i) {
      auto& e = *entry_of[size_t(idx[size_t(i)])];
      e.length = std::max(e.length, pos[idx[size_t(i)]] + 1);
    }
    // Attention: one task per (row, KV head), its `group` query heads together; causal because a
    // row sees positions <= its own.
    default_pool().parallel_for(size_t(n) * size_t(kvh), 1, [&](size_t b, size_t e) {
      float* scores = scratch<scores_buf>(size_t(group) * size_t(c.seq_len));
      for (size_t task = b; task < e; ++task) {
        const int i = int(task / size_t(kvh)), g = int(task % size_t(kvh)), r = idx[size_t(i)];
        const auto& ent = *entry_of[size_t(r)];
        const size_t head = size_t(g) * size_t(group) * size_t(hd);
        attend(att + size_t(i) * qd + head, qkv + size_t(i) * stride + head, group, hd,
               ent.k[li].data() + size_t(g) * hd, ent.v[li].data() + size_t(g) * hd, size_t(kv_dim), pos[r] + 1,
               scale, scores);
      }
    });
    float* tmp = scratch<tmp_buf>(size_t(n) * d);
    matmul(tmp, att, matrix_of(w.wo), n, qd, d);  // wo's first qd columns
    add_rows(x, tmp, idx, d);
  }

  norm_rows(xb, x, w.ffn_norm.data(), rows, d, c.norm_eps);
  for (auto& g : group_rows(rows, width, &row_width::ffn)) {
    const auto& idx = g.second;
    const int n = int(idx.size()), f = g.first ? g.first : hid;
    const float* gx = gather(xb, d, idx, rows);
    float* h13 = scratch<h13_buf>(size_t(n) * 2 * f);
    float* h = scratch<h_buf>(size_t(n) * f);
    if (f == hid) {
      matmul(h13, gx, matrix_of(w.w13), n, d, 2 * hid);
    } else {  // the first f rows of w1 (gate) and of w3 (up)
      matmul(h13, gx, matrix_of(w.w13), n, d, f, 2 * f);
      matmul(h13 + f, gx, matrix_of(w.w13).from_row(size_t(hid)), n, d, f, 2 * f);
    }
    each_row(n, [&](int i) {
      const float* g = h13 + size_t(i) * 2 * f;
      swiglu(h + size_t(i) * f, g, g + f, size_t(f));
    });
    float* tmp = scratch<tmp_buf>(size_t(n) * d);
    matmul(tmp, h, matrix_of(w.w2), n, f, d);  // w2's first f columns
    add_rows(x, tmp, idx, d);
  }
  return {};
}

status forward_layers(const model& m, kv_cache& kv, const seq_id* seqs, const int* pos, int rows, float* x,
                      const subnet& sub) {
  std::vector<row_width> width(size_t(rows), row_width{sub.ffn, sub.kv_heads});
  for (int l = 0; l < m.config.n_layers; ++l)
    if (sub.runs(l))
      if (auto st = forward_layer(m.config, *m.layers[size_t(l)], l, kv, seqs, pos, rows, x, width.data()); !st)
        return st;
  return {};
}

void embed(const model& m, const int* tokens, int rows, float* x) {
  const int d = m.config.dim;
  for (int r = 0; r < rows; ++r)
    m.tok_emb.row_f32(size_t(tokens[r]), x + size_t(r) * d);
}

void final_logits(const model& m, const float* x, int rows, float* logits) {
  const int d = m.config.dim;
  std::vector<float> xb(size_t(rows) * d);
  rmsnorm(xb.data(), x, m.final_norm.data(), rows, d, m.config.norm_eps);
  matmul(logits, xb.data(), matrix_of(m.classifier()), rows, d, m.config.vocab_size);
}

namespace {
uint32_t random_u32(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return uint32_t((s * 0x2545F4914F6CDD1Dull) >> 32);
}
}  // namespace

float draw_coin(uint64_t& rng) { return float(random_u32(rng) >> 8) / 16777216.0f; }

uint64_t initial_rng_state(uint64_t seed) { return seed == 0 ? 0x853c49e6748fea9bull : seed; }

int argmax(const float* x, int n) {
  int best = 0;
  while (best < n && std::isnan(x[best])) ++best;
  if (best == n) return 0;
  for (int i = best + 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

void apply_logit_processing(float* logits, int n, const logit_processing& p) {
  auto in = [n](int32_t t) { return t >= 0 && t < n; };
  for (auto t : p.banned)
    if (in(t)) logits[t] = -INFINITY;
  for (auto [t, b] : p.bias)
    if (in(t)) logits[t] += b;
  if (p.repetition != 1.0f)
    for (auto t : p.seen)
      if (in(t)) logits[t] = logits[t] > 0 ? logits[t] / p.repetition : logits[t] * p.repetition;
  for (auto [t, c] : p.counts)
    if (in(t) && c > 0) logits[t] -= p.frequency * float(c) + p.presence;
}

namespace {

// top_k and min_p as masks over scaled logits (-inf outside), before the softmax: tokens they
// drop get no mass at all.
void apply_top_k_min_p(float* logits, int n, const sampling_params& p) {
  if (p.top_k > 0 && p.top_k < n) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    auto key = [&](int32_t i) { return std::isnan(logits[i]) ? -INFINITY : logits[i]; };
    std::nth_element(idx.begin(), idx.begin() + p.top_k, idx.end(), [&](int32_t a, int32_t b) {
      return key(a) > key(b) || (key(a) == key(b) && a < b);
    });
    for (size_t k = size_t(p.top_k); k < idx.size(); ++k) logits[idx[k]] = -INFINITY;
  }
  if (p.min_p > 0.0f) {
    // p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p)
    const float mx = logits[argmax(logits, n)];
    const float cut = mx + std::log(p.min_p);
    for (int i = 0; i < n; ++i)
      if (!(logits[i] >= cut)) logits[i] = -INFINITY;
  }
}

}  // namespace

int sample(float* logits, int n, const sampling_params& p, uint64_t& rng) {
  if (!samples(p)) return argmax(logits, n);
  for (int i = 0; i < n; ++i) logits[i] /= p.temperature;
  apply_top_k_min_p(logits, n, p);
  const int top = argmax(logits, n);
  const float mx = logits[top];
  float coin = draw_coin(rng);  // drawn on every path: the request's stream does not depend on the values
  if (std::isnan(mx) || std::isinf(mx)) return top;  // all NaN, all -inf, or an infinite winner
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    float e = std::isnan(logits[i]) ? 0.0f : std::exp(logits[i] - mx);
    logits[i] = e;
    sum += e;  // >= 1: the top token contributes exp(0)
  }
  for (int i = 0; i < n; ++i) logits[i] /= sum;
  if (!(p.top_p > 0.0f && p.top_p < 1.0f)) {
    float cdf = 0.0f;
    for (int i = 0; i < n; ++i) {
      cdf += logits[i];
      if (coin < cdf) return i;
    }
    return n - 1;
  }
  // Top-p: candidates above a cutoff that cannot be part of the nucleus, sorted by probability.
  // When top_p < 1/n the cutoff may exceed every probability; the nucleus is then the top token.
  const float cutoff = n > 1 ? (1.0f - p.top_p) / float(n - 1) : 0.0f;
  std::vector<int> idx;
  for (int i = 0; i < n; ++i)
    if (logits[i] >= cutoff) idx.push_back(i);
  if (idx.empty()) return top;
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  float cum = 0.0f;
  size_t last = idx.size() - 1;
  for (size_t i = 0; i < idx.size(); ++i) {
    cum += logits[idx[i]];
    if (cum > p.top_p) {
      last = i;
      break;
    }
  }
  float r = coin * cum, cdf = 0.0f;
  for (size_t i = 0; i <= last; ++i) {
    cdf += logits[idx[i]];
    if (r < cdf) return idx[i];
  }
  return idx[last];
}

token_logprobs logprobs_of(const float* logits, int n, int token, int top_k) {
  token_logprobs out;
  if (n <= 0) return out;
  // log-sum-exp in double: the normaliser is one number shared by every reported value.
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i)
    if (!std::isnan(logits[i])) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  if (std::isfinite(mx))
    for (int i = 0; i < n; ++i)
      if (!std::isnan(logits[i])) sum += std::exp(double(logits[i]) - mx);
  const double lse = std::isfinite(mx) ? mx + std::log(sum) : mx;
  auto lp = [&](int i) -> float {
    if (std::isnan(logits[i]) || !std::isfinite(lse)) return -INFINITY;
    return float(double(logits[i]) - lse);
  };
  out.logprob = token >= 0 && token < n ? lp(token) : -INFINITY;
  top_k = std::clamp(top_k, 0, n);
  if (top_k > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    auto key = [&](int32_t i) { return std::isnan(logits[i]) ? -INFINITY : logits[i]; };
    std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(), [&](int32_t a, int32_t b) {
      return key(a) > key(b) || (key(a) == key(b) && a < b);
    });
    for (int k = 0; k < top_k; ++k) {
      out.top_ids.push_back(idx[size_t(k)]);
      out.top_logprobs.push_back(lp(idx[size_t(k)]));
    }
  }
  return out;
}

std::vector<int> generate_reference(const model& m, const std::vector<int>& prompt, int max_new,
                                    const sampling_params& p, const logits_observer& on_logits, const subnet& sub) {
  const auto& c = m.config;
  if (!check_subnet(sub, c)) return {};
  kv_cache kv(c, 0, c.n_layers);
  std::vector<int> out;
  std::vector<int> feed = prompt;
  int pos = 0;
  uint64_t rng = initial_rng_state(p.seed);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  while (int(out.size()) < max_new && pos + int(feed.size()) <= c.seq_len) {
    int rows = int(feed.size());
    std::vector<float> x(size_t(rows) * c.dim);
    std::vector<seq_id> seqs(static_cast<size_t>(rows), 0);
    std::vector<int> positions(static_cast<size_t>(rows));
    std::iota(positions.begin(), positions.end(), pos);
    embed(m, feed.data(), rows, x.data());
    if (!forward_layers(m, kv, seqs.data(), positions.data(), rows, x.data(), sub)) return out;
    final_logits(m, x.data() + size_t(rows - 1) * c.dim, 1, logits.data());
    std::vector<float> seen;
    if (on_logits) seen = logits;  // sample() overwrites them with probabilities
    int next = sample(logits.data(), c.vocab_size, p, rng);
    if (on_logits) on_logits(pos + rows - 1, seen.data(), next);
    pos += rows;
    if (next == c.bos_id || next == c.eos_id) break;
    out.push_back(next);
    feed = {next};
  }
  return out;
}

}  // namespace strata
