// What reduced-precision weights cost in quality: a model loaded as f32 and as each other weight
// type (converted at load, as --weights does), the f32 model's greedy tokens as the reference.
//   greedy: how many leading tokens of the type's own greedy generation equal f32's;
//   teacher-forced over f32's sequence: positions whose argmax is f32's token, and the max and
//   mean |logit - f32 logit| over all positions and vocabulary entries.
//
//   build/bin/bench_quality --model PATH [--types bf16,f16,q8] [--tokens 32] [--prompt-tokens 1,10,20,30]
#include <climits>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "apps/args.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/model/model.hpp"

using namespace strata;

namespace {

// Every position's logits of `m` over `seq` (teacher-forced): one generation per prefix.
std::vector<std::vector<float>> forced_logits(const model& m, const std::vector<int>& prompt,
                                              const std::vector<int>& generated) {
  std::vector<std::vector<float>> out;
  std::vector<int> prefix = prompt;
  for (size_t i = 0; i < generated.size(); ++i) {
    generate_reference(m, prefix, 1, {}, [&](int, const float* l, int) {
      if (out.size() == i) out.emplace_back(l, l + m.config.vocab_size);
    });
    prefix.push_back(generated[i]);
  }
  return out;
}

}  // namespace

namespace {
int run(int argc, char** argv) {
  auto a = args::parse(argc, argv, 1, {"model", "types", "tokens", "prompt-tokens"});
  if (!a) return std::fprintf(stderr, "bench_quality: %s\n", a.message().c_str()), 2;
  if (!a->has("model")) return std::fprintf(stderr, "bench_quality: --model PATH is required\n"), 2;
  const int n = int(a->integer("tokens", 32, 1, 4096));
  const std::vector<int> prompt = int_list("prompt-tokens", a->str("prompt-tokens", "1,10,20,30"), 0, INT_MAX, "a token id");
  std::vector<dtype> types;
  for (auto& s : split_list(a->str("types", "bf16,f16,q8"))) {
    auto t = parse_dtype(s);
    if (!t) throw usage_error("--types: " + t.message());
    types.push_back(*t);
  }
  auto ref = load_model(a->str("model"), load_options{true, dtype::f32});
  if (!ref) return std::fprintf(stderr, "bench_quality: %s\n", ref.message().c_str()), 1;
  for (int t : prompt)
    if (t >= (*ref)->config.vocab_size) return std::fprintf(stderr, "bench_quality: token %d outside the vocabulary\n", t), 2;
  auto f32_tokens = generate_reference(**ref, prompt, n);
  auto f32_logits = forced_logits(**ref, prompt, f32_tokens);
  std::printf("model %s (%s), %zu-token prompt, %zu greedy f32 tokens as the reference\n", a->str("model").c_str(),
              (*ref)->config.describe().c_str(), prompt.size(), f32_tokens.size());
  std::printf("%-6s %10s %16s %18s %16s %16s\n", "type", "MiB", "greedy agrees", "forced argmax ok", "max |dlogit|",
              "mean |dlogit|");
  for (dtype t : types) {
    auto m = load_model(a->str("model"), load_options{true, t});
    if (!m) return std::fprintf(stderr, "bench_quality: %s\n", m.message().c_str()), 1;
    auto own = generate_reference(**m, prompt, n);
    size_t lead = 0;
    while (lead < own.size() && lead < f32_tokens.size() && own[lead] == f32_tokens[lead]) ++lead;
    auto logits = forced_logits(**m, prompt, f32_tokens);
    double mx = 0, sum = 0;
    size_t count = 0, ok = 0;
    for (size_t p = 0; p < logits.size(); ++p) {
      const auto& l = logits[p];
      if (argmax(l.data(), int(l.size())) == argmax(f32_logits[p].data(), int(l.size()))) ++ok;
      for (size_t v = 0; v < l.size(); ++v) {
        double d = std::fabs(double(l[v]) - double(f32_logits[p][v]));
        mx = std::max(mx, d);
        sum += d;
        ++count;
      }
    }
    std::printf("%-6s %10.1f %9zu of %-4zu %11zu of %-4zu %16.4g %16.4g\n", to_string(t),
                double((*m)->config.weight_bytes()) / (1 << 20), lead, f32_tokens.size(), ok, logits.size(), mx,
                count ? sum / double(count) : 0.0);
    std::fflush(stdout);
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) { return strata::guarded_main("bench_quality", argc, argv, run); }
