// SuperServe's SubNetAct for transformers: a subnetwork of the served model is a set of its layers
// (LayerSelect) run at a prefix of their width (WeightSlice: the first FFN neurons, the first KV
// head groups with their query heads), sharing the model's weights with no copy. A subnet is a
// property of a request: its route visits only the layers it keeps, and every layer runs its
// rows at their own width (rows of one width share a GEMM). The full subnet is the model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"
#include "dataflow/model/model.hpp"

namespace strata {

// A resolved subnet: what a row runs. Zero widths mean the whole layer.
struct subnet {
  std::vector<int32_t> layers;  // the layers it runs, ascending; empty: every layer
  int32_t ffn = 0;              // FFN neurons per layer (a prefix of the hidden dimension)
  int32_t kv_heads = 0;         // KV head groups (each with its n_heads / n_kv_heads query heads)
  bool full() const { return layers.empty() && ffn == 0 && kv_heads == 0; }
  bool runs(int layer) const;
  friend bool operator==(const subnet& a, const subnet& b) {
    return a.layers == b.layers && a.ffn == b.ffn && a.kv_heads == b.kv_heads;
  }
  friend bool operator!=(const subnet& a, const subnet& b) { return !(a == b); }
};

// Whether `s` fits model `c` (layers in range, ascending, at least one; widths within the
// layer's); the message names the field.
status check_subnet(const subnet& s, const model_config& c);

// A subnet as users name it, after the model's name: `stories260K@d3w50`.
//   spec  := "full" | part+      (parts in this order, each at most once)
//   part  := "d" DEPTH           layers kept, 1..n_layers (dropped in the model's drop order)
//          | "w" PERCENT         FFN width, 1..100 (neurons kept: ceil(hidden * PERCENT / 100))
//          | "h" PERCENT         KV head groups, 1..100 (kept: ceil(n_kv_heads * PERCENT / 100))
// Omitted parts are whole: `d3` is three layers at full width. A spec that resolves to the whole
// model is the full subnet (`d5w100` on a 5-layer model names the model itself).
struct subnet_spec {
  int32_t depth = 0;    // 0: every layer
  int32_t ffn_pct = 100;
  int32_t head_pct = 100;
  friend bool operator==(const subnet_spec& a, const subnet_spec& b) {
    return a.depth == b.depth && a.ffn_pct == b.ffn_pct && a.head_pct == b.head_pct;
  }
};
expected<subnet_spec> parse_subnet_spec(const std::string& text);
std::string to_string(const subnet_spec& s);  // canonical: "full", or the parts that are not whole
// "NAME@SPEC" as an API model name: {NAME, SPEC}; without '@' {NAME, nullopt}.
std::pair<std::string, std::optional<std::string>> split_subnet_name(const std::string& model);

// LayerSelect's order: the layers to drop first. The default keeps the first and the last layer
// longest (dropping from the middle outwards, later layers first at equal distance), then drops
// the last; layer 0 is never dropped. A model may record its own order (a fine-tuned supernet).
std::vector<int32_t> default_drop_order(int n_layers);

// The subnet `spec` names on model `c` under `drop_order` (empty: default_drop_order, the one
// place the order comes from until a model records its own); bad_request naming the part that
// does not fit.
expected<subnet> resolve_subnet(const subnet_spec& spec, const model_config& c,
                                const std::vector<int32_t>& drop_order = {});
// parse_subnet_spec, then resolve_subnet: a subnet by its name, as users write it.
expected<subnet> subnet_named(const std::string& text, const model_config& c);

// The model config of a subnet as a dense model of its own (what a copy of its weights would be):
// fewer layers, hidden_dim = ffn, n_kv_heads = kv_heads, n_heads scaled alike.
model_config subnet_config(const subnet& s, const model_config& c);

// The share of a layer's parameters (and so of its bytes read and FLOPs per row) that a subnet
// row runs: 1 for the whole layer, 0 for a layer it skips. Emulated devices charge by it.
double layer_share(const subnet& s, int layer, const model_config& c);
// The share of the model's layer parameters a subnet runs (layer_share's mean over the layers).
double subnet_share(const subnet& s, const model_config& c);

// What an emulated device charges for the rows of a batch: each layer's fixed cost (its weights
// read once) at the widest share any row runs it at, each row's cost at its own share. The one
// cost model of emulated devices (the stages) and of `strata subnets --device-*`.
class device_charge {
 public:
  explicit device_charge(const model_config& c) : c_(c) {}
  // `rows` rows of subnet `s` through layers [begin, end).
  void add(const subnet& s, int begin, int end, size_t rows);
  // The time for it all at `layer_cost` per whole layer and `row_cost` per row and whole layer.
  double cost(double layer_cost, double row_cost) const;

 private:
  const model_config& c_;
  std::vector<double> layer_max_;
  double row_layers_ = 0;
};

// A subnet's weights copied out as a model of its own (subnet_config's shape, the same globals):
// a separately loadable variant, what serving without weight sharing would deploy.
model_ptr extract_subnet(const model& m, const subnet& s);

// The default subnet space served when a model has no profiled catalogue: depths n, n-1, n-2
// (at least 1), FFN widths 100/75/50 %, and KV heads 100/50 % where the model has 2+ groups.
std::vector<subnet_spec> default_subnet_space(const model_config& c);

}  // namespace strata
