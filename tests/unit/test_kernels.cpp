// Every kernel against a float64 reference on random inputs (a fixed seed; STRATA_TEST_SEED=N
// draws others).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "../test_util.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/compute/kernels.hpp"
#include "dataflow/model/model_io.hpp"

using namespace strata;
using strata::test::random_vector;

namespace {


// |a - b| within tol of the scale of the terms that produced b.
void check_close(const std::vector<float>& got, const std::vector<double>& want, double tol, double scale = 1.0) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]) / scale);
  CHECK_MESSAGE(worst < tol, "worst " << worst << " (STRATA_TEST_SEED=" << strata::test::test_seed() << ")");
}

std::vector<double> ref_rope(const std::vector<float>& v, int heads, int hd, int pos, double theta, rope_style s) {
  std::vector<double> out(v.begin(), v.end());
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd; i += 2) {
      double freq = 1.0 / std::pow(theta, double(i) / hd), a = pos * freq;
      int x = s == rope_style::interleaved ? i : i / 2, y = s == rope_style::interleaved ? i + 1 : i / 2 + hd / 2;
      double v0 = v[size_t(h * hd + x)], v1 = v[size_t(h * hd + y)];
      out[size_t(h * hd + x)] = v0 * std::cos(a) - v1 * std::sin(a);
      out[size_t(h * hd + y)] = v0 * std::sin(a) + v1 * std::cos(a);
    }
  return out;
}

}  // namespace

TEST_CASE("rmsnorm matches float64, eps included") {
  auto rng = strata::test::seeded_rng();
  int rows = 3, n = 77;
  // Rows of scale 3 (eps negligible) and of scale 1e-3, where the mean square is near eps and a
  // kernel that drops eps, or uses another one, is off by far more than the tolerance.
  for (float scale : {3.0f, 1e-3f})
    for (float eps : {1e-5f, 1e-6f}) {
      CAPTURE(scale);
      CAPTURE(eps);
      auto x = random_vector(size_t(rows * n), rng, scale), w = random_vector(size_t(n), rng);
      std::vector<float> out(x.size());
      rmsnorm(out.data(), x.data(), w.data(), rows, n, eps);
      std::vector<double> want(x.size());
      for (int r = 0; r < rows; ++r) {
        double ss = 0;
        for (int j = 0; j < n; ++j) ss += double(x[size_t(r * n + j)]) * x[size_t(r * n + j)];
        double inv = 1.0 / std::sqrt(ss / n + double(eps));
        for (int j = 0; j < n; ++j) want[size_t(r * n + j)] = w[size_t(j)] * x[size_t(r * n + j)] * inv;
      }
      check_close(out, want, 1e-5);
    }
}

TEST_CASE("matmul matches float64 for many shapes") {
  auto rng = strata::test::seeded_rng();
  for (int rows : {1, 2, 4, 5, 9, 16})
    for (int in : {1, 15, 16, 33, 200})
      for (int out : {1, 7, 64}) {
        auto x = random_vector(size_t(rows * in), rng), W = random_vector(size_t(out * in), rng);
        std::vector<float> y(static_cast<size_t>(rows * out));
        matmul(y.data(), x.data(), W.data(), rows, in, out);
        std::vector<double> want(y.size());
        for (int r = 0; r < rows; ++r)
          for (int o = 0; o < out; ++o) {
            double s = 0;
            for (int i = 0; i < in; ++i) s += double(x[size_t(r * in + i)]) * W[size_t(o * in + i)];
            want[size_t(r * out + o)] = s;
          }
        CAPTURE(rows);
        CAPTURE(in);
        CAPTURE(out);
        check_close(y, want, 1e-5 * std::sqrt(double(in)));
      }
}

TEST_CASE("matmul gives each row the same bits whatever the batch") {
  // Widths with a scalar tail after the 8-lane loop (172: stories260K's hidden size) are where
  // a compiler's FMA contraction once made 1-, 2- and 3-row tiles disagree.
  auto rng = strata::test::seeded_rng();
  for (int in : {129, 172, 61, 64}) {
    int rows = 11, out = 70;
    auto x = random_vector(size_t(rows * in), rng), W = random_vector(size_t(out * in), rng);
    std::vector<float> all(static_cast<size_t>(rows * out));
    matmul(all.data(), x.data(), W.data(), rows, in, out);
    for (int r = 0; r < rows; ++r)
      for (int k = 1; k <= 2 && r + k <= rows; ++k) {  // the row alone, and first of two
        std::vector<float> few(static_cast<size_t>(k * out));
        matmul(few.data(), x.data() + size_t(r * in), W.data(), k, in, out);
        CAPTURE(in);
        CAPTURE(r);
        CAPTURE(k);
        CHECK(std::memcmp(few.data(), all.data() + size_t(r * out), size_t(out) * 4) == 0);
      }
  }
}

TEST_CASE("rope matches float64 in both conventions") {
  auto rng = strata::test::seeded_rng();
  for (auto style : {rope_style::interleaved, rope_style::rotate_half})
    for (int pos : {0, 1, 17, 511}) {
      int heads = 3, hd = 16;
      auto v = random_vector(size_t(heads * hd), rng);
      auto want = ref_rope(v, heads, hd, pos, 10000.0, style);
      rope(v.data(), heads, hd, pos, 10000.0f, style);
      check_close(v, want, 2e-5 * std::max(1, pos / 64));
    }
}

TEST_CASE("rotate_half on permuted rows equals interleaved rope") {
  // The identity behind converting llama2.c checkpoints to Hugging Face layout.
  auto rng = strata::test::seeded_rng();
  int hd = 8;
  auto v = random_vector(size_t(hd), rng);
  std::vector<float> p(static_cast<size_t>(hd));
  for (int i = 0; i < hd / 2; ++i) {
    p[size_t(i)] = v[size_t(2 * i)];
    p[size_t(i + hd / 2)] = v[size_t(2 * i + 1)];
  }
  rope(v.data(), 1, hd, 9, 10000.0f, rope_style::interleaved);
  rope(p.data(), 1, hd, 9, 10000.0f, rope_style::rotate_half);
  for (int i = 0; i < hd / 2; ++i) {
    CHECK(p[size_t(i)] == doctest::Approx(v[size_t(2 * i)]).epsilon(1e-6));
    CHECK(p[size_t(i + hd / 2)] == doctest::Approx(v[size_t(2 * i + 1)]).epsilon(1e-6));
  }
}

TEST_CASE("swiglu and softmax match float64") {
  auto rng = strata::test::seeded_rng();
  auto a = random_vector(100, rng, 6.0f), b = random_vector(100, rng);
  std::vector<float> h(100);
  swiglu(h.data(), a.data(), b.data(), 100);
  std::vector<double> want(100);
  for (size_t i = 0; i < 100; ++i) want[i] = a[i] / (1.0 + std::exp(-double(a[i]))) * b[i];
  check_close(h, want, 1e-6);
  auto s = random_vector(50, rng, 20.0f);
  std::vector<double> ws(50);
  double mx = *std::max_element(s.begin(), s.end()), sum = 0;
  for (size_t i = 0; i < 50; ++i) sum += ws[i] = std::exp(double(s[i]) - mx);
  for (auto& x : ws) x /= sum;
  softmax(s.data(), 50);
  check_close(s, ws, 1e-6);
}

namespace {

// attend's arithmetic written out in scalars (kernels.hpp): 8-lane dot products (lane j % 8,
// multiply then add), the lanes summed ((0+4)+(2+6))+((1+5)+(3+7)), the tail one by one; softmax;
// each output value summed over the positions in order from zero.
std::vector<float> attend_scalar(const float* q, int nq, int hd, const float* K, const float* V, size_t ld, int len,
                                 float scale) {
  std::vector<float> out(size_t(nq * hd), 0.0f), p(static_cast<size_t>(len));
  const int body = hd - hd % 8;
  for (int h = 0; h < nq; ++h) {
    for (int t = 0; t < len; ++t) {
      float a[8] = {};
      for (int j = 0; j < body; ++j) a[j % 8] = a[j % 8] + q[h * hd + j] * K[size_t(t) * ld + size_t(j)];
      float d = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
      for (int j = body; j < hd; ++j) d += q[h * hd + j] * K[size_t(t) * ld + size_t(j)];
      p[size_t(t)] = d * scale;
    }
    softmax(p.data(), len);
    for (int t = 0; t < len; ++t)
      for (int j = 0; j < hd; ++j) out[size_t(h * hd + j)] += p[size_t(t)] * V[size_t(t) * ld + size_t(j)];
  }
  return out;
}

}  // namespace

TEST_CASE("attention of grouped heads matches float64 and each head alone bit for bit") {
  auto rng = strata::test::seeded_rng();
  for (int hd : {64, 8, 13})  // 13: a tail past the 8-lane body
    for (int nq : {4, 6})      // 6: a second group of heads past the four kept in registers
      for (int len : {37, 5}) {  // 5: fewer positions than one block of eight scores
        const int ld = 3 * hd;  // K and V rows wider than one head, as in the cache
        CAPTURE(hd);
        CAPTURE(nq);
        CAPTURE(len);
        auto q = random_vector(size_t(nq * hd), rng), K = random_vector(size_t(len * ld), rng, 2.0f),
             V = random_vector(size_t(len * ld), rng);
        const float scale = 1.0f / std::sqrt(float(hd));
        std::vector<float> out(size_t(nq * hd)), scores(size_t(nq * len));
        attend(out.data(), q.data(), nq, hd, K.data() + hd, V.data() + hd, size_t(ld), len, scale, scores.data());
        std::vector<double> want(out.size());
        for (int h = 0; h < nq; ++h) {
          std::vector<double> p(static_cast<size_t>(len));
          double mx = -1e300, sum = 0;
          for (int t = 0; t < len; ++t) {
            double d = 0;
            for (int j = 0; j < hd; ++j) d += double(q[size_t(h * hd + j)]) * K[size_t(t * ld + hd + j)];
            mx = std::max(mx, p[size_t(t)] = d * scale);
          }
          for (auto& x : p) sum += x = std::exp(x - mx);
          for (int t = 0; t < len; ++t)
            for (int j = 0; j < hd; ++j) want[size_t(h * hd + j)] += p[size_t(t)] / sum * V[size_t(t * ld + hd + j)];
        }
        check_close(out, want, 1e-5);
        // the same bits as the plain order: no ISA level or blocking changes them
        const auto exact = attend_scalar(q.data(), nq, hd, K.data() + hd, V.data() + hd, size_t(ld), len, scale);
        CHECK(std::memcmp(exact.data(), out.data(), out.size() * sizeof(float)) == 0);
        for (int h = 0; h < nq; ++h) {  // a head's bits do not depend on the heads computed beside it
          std::vector<float> one(static_cast<size_t>(hd)), sc(static_cast<size_t>(len));
          attend(one.data(), q.data() + h * hd, 1, hd, K.data() + hd, V.data() + hd, size_t(ld), len, scale, sc.data());
          CHECK(std::memcmp(one.data(), out.data() + h * hd, one.size() * sizeof(float)) == 0);
        }
      }
}

namespace {

// A float64 transformer layer written out plainly: the reference for forward_layer.
struct ref_layer {
  const model_config& c;
  const layer_weights& w;
  std::vector<std::vector<double>> K, V;  // per position: [kv_dim]

  std::vector<double> mv(const float* W, const std::vector<double>& x, int out) {
    std::vector<double> y(static_cast<size_t>(out));
    for (int o = 0; o < out; ++o)
      for (size_t i = 0; i < x.size(); ++i) y[size_t(o)] += double(W[size_t(o) * x.size() + i]) * x[i];
    return y;
  }
  std::vector<double> norm(const std::vector<double>& x, const tensor& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    double inv = 1.0 / std::sqrt(ss / double(x.size()) + c.norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] * inv;
    return y;
  }
  void rope_d(std::vector<double>& v, int heads, int pos) {
    auto r = v;
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < c.head_dim; i += 2) {
        double freq = 1.0 / std::pow(double(c.rope_theta), double(i) / c.head_dim), a = pos * freq;
        bool il = c.rope == rope_style::interleaved;
        size_t x = size_t(h * c.head_dim + (il ? i : i / 2)), y = size_t(h * c.head_dim + (il ? i + 1 : i / 2 + c.head_dim / 2));
        double v0 = v[x], v1 = v[y];
        r[x] = v0 * std::cos(a) - v1 * std::sin(a);
        r[y] = v0 * std::sin(a) + v1 * std::cos(a);
      }
    v = r;
  }
  std::vector<double> step(std::vector<double> x, int pos) {
    int d = c.dim, q_dim = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim;
    auto xb = norm(x, w.att_norm);
    auto q = mv(w.wqkv.data(), xb, q_dim);
    auto k = mv(w.wqkv.data() + size_t(q_dim) * d, xb, kv);
    auto v = mv(w.wqkv.data() + size_t(q_dim + kv) * d, xb, kv);
    rope_d(q, c.n_heads, pos);
    rope_d(k, c.n_kv_heads, pos);
    K.push_back(k);
    V.push_back(v);
    std::vector<double> att(static_cast<size_t>(q_dim));
    for (int h = 0; h < c.n_heads; ++h) {
      int g = h / (c.n_heads / c.n_kv_heads);
      std::vector<double> s(static_cast<size_t>(pos + 1));
      double mx = -1e300, sum = 0;
      for (int t = 0; t <= pos; ++t) {
        for (int i = 0; i < hd; ++i) s[size_t(t)] += q[size_t(h * hd + i)] * K[size_t(t)][size_t(g * hd + i)];
        s[size_t(t)] /= std::sqrt(double(hd));
        mx = std::max(mx, s[size_t(t)]);
      }
      for (auto& e : s) sum += e = std::exp(e - mx);
      for (int t = 0; t <= pos; ++t)
        for (int i = 0; i < hd; ++i) att[size_t(h * hd + i)] += s[size_t(t)] / sum * V[size_t(t)][size_t(g * hd + i)];
    }
    auto o = mv(w.wo.data(), att, d);
    for (int i = 0; i < d; ++i) x[size_t(i)] += o[size_t(i)];
    xb = norm(x, w.ffn_norm);
    auto a = mv(w.w13.data(), xb, c.hidden_dim);
    auto b = mv(w.w13.data() + size_t(c.hidden_dim) * d, xb, c.hidden_dim);
    std::vector<double> h(a.size());
    for (size_t i = 0; i < a.size(); ++i) h[i] = a[i] / (1 + std::exp(-a[i])) * b[i];
    auto f = mv(w.w2.data(), h, d);
    for (int i = 0; i < d; ++i) x[size_t(i)] += f[size_t(i)];
    return x;
  }
};

}  // namespace

TEST_CASE("a transformer layer (GQA, KV cache, prefill then decode) matches float64") {
  auto rng = strata::test::seeded_rng();
  for (auto style : {rope_style::interleaved, rope_style::rotate_half}) {
    auto c = model_config::llama(48, 80, 1, 6, 2, 10, 32);
    c.rope = style;
    auto m = make_random_model(c, rng(), "t");
    const auto& w = *m->layers[0];
    kv_cache kv(c, 0, 1);
    ref_layer ref{c, w, {}, {}};
    // Prefill 5 positions in one batch, then decode 3 one by one.
    int prefill = 5;
    auto x = random_vector(size_t(prefill * c.dim), rng);
    std::vector<double> want;
    for (int p = 0; p < prefill; ++p) {
      auto y = ref.step(std::vector<double>(x.begin() + p * c.dim, x.begin() + (p + 1) * c.dim), p);
      want.insert(want.end(), y.begin(), y.end());
    }
    std::vector<seq_id> seqs(size_t(prefill), 7);
    std::vector<int> pos = {0, 1, 2, 3, 4};
    REQUIRE(forward_layer(c, w, 0, kv, seqs.data(), pos.data(), prefill, x.data()));
    check_close(x, want, 1e-4);
    for (int p = prefill; p < prefill + 3; ++p) {
      auto x1 = random_vector(size_t(c.dim), rng);
      auto y = ref.step(std::vector<double>(x1.begin(), x1.end()), p);
      seq_id s = 7;
      REQUIRE(forward_layer(c, w, 0, kv, &s, &p, 1, x1.data()));
      check_close(x1, y, 1e-4);
    }
    CHECK(kv.length(7) == prefill + 3);
    // A gap in positions is an error, not garbage: one past the next position, or within a batch.
    int gap = kv.length(7) + 1;
    seq_id s = 7;
    auto x2 = random_vector(size_t(c.dim), rng);
    auto st = forward_layer(c, w, 0, kv, &s, &gap, 1, x2.data());
    CHECK_FALSE(st);
    CHECK(st.message().find("does not continue") != std::string::npos);
    seq_id two[] = {8, 8};
    int skip[] = {0, 2};
    std::vector<float> x3 = random_vector(size_t(2 * c.dim), rng);
    st = forward_layer(c, w, 0, kv, two, skip, 2, x3.data());
    CHECK_FALSE(st);
    CHECK(st.message().find("sequence 8: position 2 does not continue") != std::string::npos);
    int twice[] = {0, 0};  // one position written twice in a batch
    st = forward_layer(c, w, 0, kv, two, twice, 2, x3.data());
    CHECK_FALSE(st);
    CHECK(st.message().find("sequence 8: position 0 does not continue") != std::string::npos);
    kv.release(8);
    kv.release(7);
    CHECK(kv.sequences() == 0);
  }
}

TEST_CASE("a sequence's KV cache moves between caches and decoding goes on bit for bit") {
  auto rng = strata::test::seeded_rng();
  auto c = model_config::llama(48, 80, 3, 6, 2, 10, 32);
  auto m = make_random_model(c, rng(), "t");
  // `whole` runs layers 0-2 throughout; `a` runs layer 0 and `b` layers 1-2, until b takes
  // over every layer with layer 0's cache moved from a (as a request leaves a cooperative route).
  kv_cache whole(c, 0, 3), a(c, 0, 1), b(c, 0, 3);
  auto run = [&](kv_cache& kv, int first, int last, seq_id s, int pos, std::vector<float>& x) {
    for (int l = first; l < last; ++l) REQUIRE(forward_layer(c, *m->layers[size_t(l)], l, kv, &s, &pos, 1, x.data()));
  };
  for (int p = 0; p < 6; ++p) {
    auto x = random_vector(size_t(c.dim), rng), y = x;
    run(whole, 0, 3, 9, p, x);
    run(a, 0, 1, 9, p, y);
    run(b, 1, 3, 9, p, y);
    CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
  }
  auto slice = a.export_seq(9, 0, 1);
  REQUIRE(slice);
  CHECK(slice->length == 6);
  CHECK(slice->bytes() == 2 * 6 * size_t(c.kv_dim()) * sizeof(float));
  REQUIRE(b.import_seq(*slice));
  a.release(9);
  for (int p = 6; p < 10; ++p) {
    auto x = random_vector(size_t(c.dim), rng), y = x;
    run(whole, 0, 3, 9, p, x);
    run(b, 0, 3, 9, p, y);
    CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
  }
  // Precise errors: unknown sequence, layers outside the cache, a slice of another length, a
  // truncated slice.
  CHECK(a.export_seq(9, 0, 1).message() == "sequence 9 has no cache here");
  CHECK(b.export_seq(9, 2, 4).message().find("not all in this cache's [0,3)") != std::string::npos);
  auto stale = *slice;
  CHECK(b.import_seq(stale).message() == "sequence 9 holds 10 positions here, the slice 6");
  stale.seq = 10;
  stale.k.pop_back();
  CHECK(b.import_seq(stale).message().find("malformed KV slice") != std::string::npos);
}

TEST_CASE("f16 and bf16 conversions") {
  CHECK(f32_to_f16(1.0f) == 0x3C00);
  CHECK(f32_to_f16(-2.0f) == 0xC000);
  CHECK(f32_to_f16(65504.0f) == 0x7BFF);
  CHECK(f32_to_f16(1e6f) == 0x7C00);  // overflow to inf
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f32_to_bf16(1.0f) == 0x3F80);
  CHECK(bf16_to_f32(0x4049) == doctest::Approx(3.140625));
  // Every finite half survives a round trip through float.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;
    REQUIRE(f32_to_f16(f16_to_f32(uint16_t(h))) == h);
  }
  // Round to nearest: 1 + 2^-11 is a tie that goes to even (1.0); a bit more rounds up.
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3C01);
}

// The determinism contract behind seeded sampling under load: a row's logits are a function of
// its sequence's tokens only, not of the other rows of its batch nor of how its prompt was
// split into prefill chunks.
TEST_CASE("a sequence's logits do not depend on its batch or on its prefill chunks") {
  auto rng = strata::test::seeded_rng();
  for (auto c : {model_config::llama(48, 80, 3, 6, 2, 50, 32), model_config::llama(64, 172, 5, 8, 4, 512, 32)}) {
    auto m = make_random_model(c, rng(), "t");
    const int n = 12, V = c.vocab_size;
    std::vector<int> toks(n), other(9);
    for (auto& t : toks) t = int(rng() % uint32_t(V));
    for (auto& t : other) t = int(rng() % uint32_t(V));
    // Runs rows (seq, pos, token) through every layer and the classifier: [rows, V] logits.
    auto step = [&](kv_cache& kv, const std::vector<seq_id>& seqs, const std::vector<int>& pos, const std::vector<int>& tk) {
      int rows = int(seqs.size());
      std::vector<float> x(size_t(rows) * size_t(c.dim)), logits(size_t(rows) * size_t(V));
      embed(*m, tk.data(), rows, x.data());
      for (int l = 0; l < c.n_layers; ++l)
        REQUIRE(forward_layer(c, *m->layers[size_t(l)], l, kv, seqs.data(), pos.data(), rows, x.data()));
      final_logits(*m, x.data(), rows, logits.data());
      return logits;
    };
    kv_cache alone(c, 0, c.n_layers), mixed(c, 0, c.n_layers);
    std::vector<seq_id> s1(size_t(n), 1);
    std::vector<int> p1(static_cast<size_t>(n));
    std::iota(p1.begin(), p1.end(), 0);
    auto want = step(alone, s1, p1, toks);  // one prefill of the whole prompt, nothing else
    // The same prompt in chunks of 1..5 rows, each step also carrying another sequence's rows.
    std::vector<float> got;
    int done = 0, other_done = 0, chunk = 1;
    while (done < n) {
      std::vector<seq_id> seqs;
      std::vector<int> pos, tk;
      for (int i = 0; i < chunk % 3 && other_done < int(other.size()); ++i, ++other_done) {
        seqs.push_back(2);
        pos.push_back(other_done);
        tk.push_back(other[size_t(other_done)]);
      }
      const size_t first = seqs.size();
      for (int i = 0; i < chunk && done < n; ++i, ++done) {
        seqs.push_back(1);
        pos.push_back(done);
        tk.push_back(toks[size_t(done)]);
      }
      auto l = step(mixed, seqs, pos, tk);
      got.insert(got.end(), l.begin() + long(first) * V, l.end());
      chunk = chunk % 5 + 1;
    }
    REQUIRE(got.size() == want.size());
    for (int r = 0; r < n; ++r) {
      CAPTURE(r);
      CHECK(std::memcmp(got.data() + size_t(r) * size_t(V), want.data() + size_t(r) * size_t(V), size_t(V) * 4) == 0);
    }
  }
}
