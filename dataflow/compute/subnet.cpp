#include "dataflow/compute/subnet.hpp"

#include <cstring>

#include <algorithm>
#include <cstdlib>

namespace strata {

bool subnet::runs(int layer) const {
  return layers.empty() || std::binary_search(layers.begin(), layers.end(), int32_t(layer));
}

status check_subnet(const subnet& s, const model_config& c) {
  auto bad = [](std::string m) -> status { return make_error(errc::bad_request, "subnet: " + std::move(m)); };
  if (s.ffn < 0 || s.ffn > c.hidden_dim)
    return bad("FFN width " + std::to_string(s.ffn) + " outside [1, " + std::to_string(c.hidden_dim) + "]");
  if (s.kv_heads < 0 || s.kv_heads > c.n_kv_heads)
    return bad(std::to_string(s.kv_heads) + " KV head groups, outside [1, " + std::to_string(c.n_kv_heads) + "]");
  if (s.layers.size() > size_t(c.n_layers)) return bad("more layers than the model's " + std::to_string(c.n_layers));
  for (size_t i = 0; i < s.layers.size(); ++i) {
    if (s.layers[i] < 0 || s.layers[i] >= c.n_layers)
      return bad("layer " + std::to_string(s.layers[i]) + " outside [0, " + std::to_string(c.n_layers) + ")");
    if (i > 0 && s.layers[i] <= s.layers[i - 1]) return bad("layers must be ascending, each once");
  }
  return {};
}

expected<subnet_spec> parse_subnet_spec(const std::string& text) {
  auto bad = [&](const std::string& why) -> expected<subnet_spec> {
    return make_error(errc::bad_request, "subnet '" + text + "': " + why +
                                             " (expected 'full' or d<layers>, w<FFN %>, h<KV head %> in this order, "
                                             "e.g. d3w50)");
  };
  subnet_spec s;
  if (text == "full") return s;
  if (text.empty()) return bad("empty");
  const std::string order = "dwh";
  size_t next_part = 0, i = 0;
  while (i < text.size()) {
    size_t k = order.find(text[i]);
    if (k == std::string::npos) return bad(std::string("unknown part '") + text[i] + "'");
    if (k < next_part) return bad(std::string("part '") + text[i] + "' repeated or out of order");
    next_part = k + 1;
    size_t j = i + 1;
    while (j < text.size() && j - i <= 4 && text[j] >= '0' && text[j] <= '9') ++j;
    if (j == i + 1) return bad(std::string("'") + text[i] + "' needs a number");
    if (j < text.size() && text[j] >= '0' && text[j] <= '9') return bad("number too long");
    int v = std::atoi(text.substr(i + 1, j - i - 1).c_str());
    if (text[i] == 'd') {
      if (v < 1) return bad("depth must be at least 1");
      s.depth = v;
    } else {
      if (v < 1 || v > 100) return bad(std::string("'") + text[i] + "' is a percentage in [1, 100]");
      (text[i] == 'w' ? s.ffn_pct : s.head_pct) = v;
    }
    i = j;
  }
  return s;
}

std::string to_string(const subnet_spec& s) {
  std::string out;
  if (s.depth > 0) out += "d" + std::to_string(s.depth);
  if (s.ffn_pct != 100) out += "w" + std::to_string(s.ffn_pct);
  if (s.head_pct != 100) out += "h" + std::to_string(s.head_pct);
  return out.empty() ? "full" : out;
}

std::pair<std::string, std::optional<std::string>> split_subnet_name(const std::string& model) {
  auto at = model.rfind('@');
  if (at == std::string::npos) return {model, std::nullopt};
  return {model.substr(0, at), model.substr(at + 1)};
}

std::vector<int32_t> default_drop_order(int n_layers) {
  std::vector<int32_t> mid;
  for (int l = 1; l + 1 < n_layers; ++l) mid.push_back(l);
  // Distance from the centre, doubled to stay integral; later layers first at equal distance.
  std::stable_sort(mid.begin(), mid.end(), [n_layers](int32_t a, int32_t b) {
    int da = std::abs(2 * a - (n_layers - 1)), db = std::abs(2 * b - (n_layers - 1));
    return da != db ? da < db : a > b;
  });
  if (n_layers > 1) mid.push_back(n_layers - 1);
  return mid;
}

expected<subnet> subnet_named(const std::string& text, const model_config& c) {
  auto spec = parse_subnet_spec(text);
  if (!spec) return spec.err();
  return resolve_subnet(*spec, c);
}

expected<subnet> resolve_subnet(const subnet_spec& spec, const model_config& c, const std::vector<int32_t>& order) {
  const auto& drop_order = !order.empty() ? order : !c.drop_order.empty() ? c.drop_order : default_drop_order(c.n_layers);
  auto bad = [&](std::string m) -> expected<subnet> {
    return make_error(errc::bad_request, "subnet '" + to_string(spec) + "': " + std::move(m));
  };
  subnet s;
  if (spec.depth > c.n_layers)
    return bad("depth " + std::to_string(spec.depth) + " is more than the model's " + std::to_string(c.n_layers) +
               " layers");
  if (spec.depth > 0 && spec.depth < c.n_layers) {
    const size_t drop = size_t(c.n_layers - spec.depth);
    if (drop > drop_order.size())
      return bad("the model's drop order removes at most " + std::to_string(drop_order.size()) + " layers");
    std::vector<bool> gone(size_t(c.n_layers), false);
    for (size_t i = 0; i < drop; ++i) {
      int32_t l = drop_order[i];
      if (l < 0 || l >= c.n_layers || gone[size_t(l)]) return bad("the model's drop order is malformed");
      gone[size_t(l)] = true;
    }
    for (int l = 0; l < c.n_layers; ++l)
      if (!gone[size_t(l)]) s.layers.push_back(l);
  }
  auto part = [](int whole, int pct) { return int32_t((int64_t(whole) * pct + 99) / 100); };
  if (spec.ffn_pct < 100) s.ffn = std::max(1, part(c.hidden_dim, spec.ffn_pct));
  if (spec.head_pct < 100) s.kv_heads = std::max(1, part(c.n_kv_heads, spec.head_pct));
  if (s.ffn == c.hidden_dim) s.ffn = 0;
  if (s.kv_heads == c.n_kv_heads) s.kv_heads = 0;
  return s;
}

double subnet_share(const subnet& s, const model_config& c) {
  double share = 0;
  for (int l = 0; l < c.n_layers; ++l) share += layer_share(s, l, c);
  return share / c.n_layers;
}

void device_charge::add(const subnet& s, int begin, int end, size_t rows) {
  if (layer_max_.size() < size_t(c_.n_layers)) layer_max_.resize(size_t(c_.n_layers), 0.0);
  for (int l = std::max(0, begin); l < std::min(end, c_.n_layers); ++l) {
    const double sh = layer_share(s, l, c_);
    layer_max_[size_t(l)] = std::max(layer_max_[size_t(l)], sh);
    row_layers_ += sh * double(rows);
  }
}

double device_charge::cost(double layer_cost, double row_cost) const {
  double fixed = 0;
  for (auto m : layer_max_) fixed += m;
  return fixed * layer_cost + row_layers_ * row_cost;
}

model_config subnet_config(const subnet& s, const model_config& c) {
  model_config out = c;
  if (!s.layers.empty()) {
    out.n_layers = int(s.layers.size());
    // A model's own order, its kept layers renumbered: the copy drops further as the supernet
    // would (a model on the default order keeps the default: empty).
    out.drop_order.clear();
    for (auto l : c.drop_order) {
      auto it = std::find(s.layers.begin(), s.layers.end(), l);
      if (it != s.layers.end()) out.drop_order.push_back(int32_t(it - s.layers.begin()));
    }
  }
  if (s.ffn > 0) out.hidden_dim = s.ffn;
  if (s.kv_heads > 0) {
    out.n_heads = c.n_heads / c.n_kv_heads * s.kv_heads;
    out.n_kv_heads = s.kv_heads;
  }
  return out;
}

double layer_share(const subnet& s, int layer, const model_config& c) {
  if (!s.runs(layer)) return 0.0;
  if (s.ffn == 0 && s.kv_heads == 0) return 1.0;
  auto params = [&c](double hid, double kvh) {
    const double hd = c.head_dim, qd = kvh * (c.n_heads / c.n_kv_heads) * hd, kd = kvh * hd;
    return (qd + 2 * kd) * c.dim + double(c.dim) * qd + 3 * hid * c.dim + 2.0 * c.dim;
  };
  return params(s.ffn ? s.ffn : c.hidden_dim, s.kv_heads ? s.kv_heads : c.n_kv_heads) /
         params(c.hidden_dim, c.n_kv_heads);
}

namespace {

// A row's first n values, as stored. A q8 prefix ending inside a block keeps that block's scale
// and zeroes the values past n: the copy computes what the prefix slice computes.
void copy_prefix(dtype t, uint8_t* dst, const uint8_t* src, size_t n) {
  std::memcpy(dst, src, row_bytes(t, n));
  if (t == dtype::q8 && n % q8_block != 0) {
    uint8_t* last = dst + (n / q8_block) * q8_block_bytes + 2;
    std::memset(last + n % q8_block, 0, q8_block - n % q8_block);
  }
}

}  // namespace

model_ptr extract_subnet(const model& m, const subnet& s) {
  const auto& c = m.config;
  auto out = std::make_shared<model>(m);
  out->config = subnet_config(s, c);
  const auto& k = out->config;
  const size_t d = size_t(c.dim), qd = size_t(k.q_dim()), kd = size_t(k.kv_dim()), f = size_t(k.hidden_dim);
  const size_t q_all = size_t(c.q_dim()), kv_all = size_t(c.kv_dim()), h_all = size_t(c.hidden_dim);
  out->layers.clear();
  out->tensors.clear();  // the manifest described the source files, not this copy
  for (int l = 0; l < c.n_layers; ++l) {
    if (!s.runs(l)) continue;
    const auto& w = *m.layers[size_t(l)];
    auto n = std::make_shared<layer_weights>();
    n->allocate(k);
    n->att_norm.copy(w.att_norm.data(), d);
    n->ffn_norm.copy(w.ffn_norm.data(), d);
    const dtype t = c.weights;
    // Row blocks: wq's first qd rows, wk's and wv's first kd; w1's and w3's first f.
    auto rows = [&](tensor& dst, size_t at, const tensor& src, size_t from, size_t n_rows) {
      std::memcpy(dst.mutable_raw() + at * row_bytes(t, d), src.row(from), n_rows * row_bytes(t, d));
    };
    rows(n->wqkv, 0, w.wqkv, 0, qd);
    rows(n->wqkv, qd, w.wqkv, q_all, kd);
    rows(n->wqkv, qd + kd, w.wqkv, q_all + kv_all, kd);
    rows(n->w13, 0, w.w13, 0, f);
    rows(n->w13, f, w.w13, h_all, f);
    // Column prefixes: wo's first qd, w2's first f, of every output row.
    for (size_t o = 0; o < d; ++o) {
      copy_prefix(t, n->wo.mutable_raw() + o * row_bytes(t, qd), w.wo.row(o), qd);
      copy_prefix(t, n->w2.mutable_raw() + o * row_bytes(t, f), w.w2.row(o), f);
    }
    out->layers.push_back(std::move(n));
  }
  return out;
}

std::vector<subnet_spec> default_subnet_space(const model_config& c) {
  std::vector<subnet_spec> out;
  std::vector<int> heads = {100};
  if (c.n_kv_heads >= 2) heads.push_back(50);
  for (int d = c.n_layers; d >= std::max(1, c.n_layers - 2); --d)
    for (int w : {100, 75, 50})
      for (int h : heads) out.push_back(subnet_spec{d == c.n_layers ? 0 : d, w, h});
  return out;
}

}  // namespace strata
