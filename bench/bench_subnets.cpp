// SubNetAct's actuation and memory against separately loaded variants (SuperServe's comparison),
// both measured in this run:
//   - actuation: a request for another subnet of the loaded supernet pays only its first token
//     (the route changes, no weight moves); a separately deployed variant pays its load from disk
//     first (INFaaS-style switching). Ratio: (load + first token) / first token, per subnet.
//   - memory: the weight bytes of one supernet serving every subnet against the bytes of every
//     subnet loaded as its own model (SuperServe reports up to 2.6x).
//
//   build/bin/bench_subnets [--model PATH] [--space default|LIST] [--prompt-len 16] [--reps 5]
//                           [--workdir DIR]
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "apps/args.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/compute/subnet.hpp"
#include "dataflow/files.hpp"
#include "dataflow/model/model_io.hpp"

using namespace strata;
namespace fs = std::filesystem;
using clk = std::chrono::steady_clock;

namespace {

double ms_since(clk::time_point t0) { return std::chrono::duration<double, std::milli>(clk::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

size_t weight_bytes(const model& m) {
  size_t n = (m.tok_emb.size() + m.final_norm.size() + m.lm_head.size()) * sizeof(float);
  for (auto& l : m.layers) n += l->bytes();
  return n;
}

}  // namespace

namespace {
int run(int argc, char** argv) {
  static const command_spec cmd{"bench_subnets", "", "", {
      {"model", "PATH", "", "the supernet", "models/stories260K in the data directory"},
      {"space", "LIST", "default", "subnets (default: the default subnet space)", ""},
      {"prompt-len", "N", "16", "prompt tokens of the first-token request", ""},
      {"reps", "N", "5", "repetitions (medians count)", ""},
      {"workdir", "DIR", "", "where the variants are written", "a temporary directory"},
  }, ""};
  auto a = args::parse(argc, argv, 1, cmd);
  if (!a) return std::fprintf(stderr, "bench_subnets: %s\n", a.message().c_str()), 1;
  const std::string path = a->str("model", default_model_dir());
  auto loaded = load_model(path);
  if (!loaded) return std::fprintf(stderr, "bench_subnets: %s\n", loaded.message().c_str()), 1;
  const model& m = **loaded;
  const auto& c = m.config;
  const int prompt_len = int(a->integer("prompt-len", 1, c.seq_len - 2));
  const int reps = int(a->integer("reps", 1, 1000));
  std::vector<subnet_spec> space;
  if (a->str("space", "default") == "default") {
    space = default_subnet_space(c);
  } else {
    for (auto& s : split_list(a->str("space"))) {
      auto p = parse_subnet_spec(s);
      if (!p) return std::fprintf(stderr, "bench_subnets: --space: %s\n", p.message().c_str()), 1;
      space.push_back(*p);
    }
  }
  fs::path work = a->has("workdir") ? fs::path(a->str("workdir"))
                                    : fs::temp_directory_path() / ("strata-bench-subnets-" + std::to_string(::getpid()));
  fs::create_directories(work);
  std::vector<int> prompt(static_cast<size_t>(prompt_len));
  for (int i = 0; i < prompt_len; ++i) prompt[size_t(i)] = i == 0 ? c.bos_id : (i * 37 + 11) % c.vocab_size;

  std::printf("supernet %s: %s, %.2f MiB of weights\n", m.name.c_str(), c.describe().c_str(),
              weight_bytes(m) / 1048576.0);
  std::printf("%-12s %12s %14s %14s %10s %12s\n", "subnet", "switch ms", "variant load", "variant ttft", "ratio",
              "variant MiB");
  size_t variants_bytes = 0;
  std::vector<double> ratios;
  for (auto& sp : space) {
    auto sub = resolve_subnet(sp, c);
    if (!sub) return std::fprintf(stderr, "bench_subnets: %s\n", sub.message().c_str()), 1;
    const std::string name = to_string(sp);
    fs::path dir = work / name;
    auto variant = extract_subnet(m, *sub);
    if (auto st = save_hf(*variant, dir.string(), dtype::f32); !st)
      return std::fprintf(stderr, "bench_subnets: %s\n", st.message().c_str()), 1;
    std::vector<double> sw, load, vttft;
    size_t vbytes = 0;
    for (int r = 0; r < reps; ++r) {
      // The supernet: the request names the subnet; its first token is all it waits for.
      auto t0 = clk::now();
      auto a1 = generate_reference(m, prompt, 1, {}, {}, *sub);
      sw.push_back(ms_since(t0));
      // A variant: loaded from its own files (page cache warm after the first rep), then the same.
      t0 = clk::now();
      auto v = load_model(dir.string());
      if (!v) return std::fprintf(stderr, "bench_subnets: %s\n", v.message().c_str()), 1;
      load.push_back(ms_since(t0));
      t0 = clk::now();
      auto a2 = generate_reference(**v, prompt, 1);
      vttft.push_back(ms_since(t0));
      vbytes = weight_bytes(**v);
      if (a1 != a2) std::fprintf(stderr, "bench_subnets: %s: the variant's first token differs\n", name.c_str());
    }
    variants_bytes += vbytes;
    const double ratio = (median(load) + median(vttft)) / median(sw);
    ratios.push_back(ratio);
    std::printf("%-12s %12.3f %14.3f %14.3f %9.1fx %12.2f\n", name.c_str(), median(sw), median(load), median(vttft),
                ratio, vbytes / 1048576.0);
    std::fflush(stdout);
  }
  fs::remove_all(work);
  const double mem = double(variants_bytes) / double(weight_bytes(m));
  std::printf("\nactuation: a variant's load + first token / a subnet's first token: median %.1fx over %zu subnets "
              "(limit >= 10x: switching a subnet must cost no load)\n",
              median(ratios), ratios.size());
  std::printf("memory: %zu subnets as separate models / one supernet = %.2f MiB / %.2f MiB = %.2fx "
              "(SuperServe: up to 2.6x)\n",
              space.size(), variants_bytes / 1048576.0, weight_bytes(m) / 1048576.0, mem);
  return median(ratios) >= 10 ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) { return strata::guarded_main("bench_subnets", argc, argv, run); }
