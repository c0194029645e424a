// strata: the command-line tool. Subcommands generate text through the actor pipeline, run the
// demo, inspect/verify model manifests, write random-weight models and convert checkpoints.
#include <algorithm>
#include <climits>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "actors/engine.hpp"
#include "actors/http_server.hpp"
#include "actors/bench_serve.hpp"
#include "actors/experiments.hpp"
#include "actors/local_cluster.hpp"
#include "actors/replay.hpp"
#include "actors/scaler.hpp"
#include "apps/args.hpp"
#include "apps/cluster_cli.hpp"
#include "apps/commands.hpp"
#include "dataflow/compute/cpu.hpp"
#include "dataflow/files.hpp"
#include "dataflow/model/manifest.hpp"
#include "dataflow/model/param_image.hpp"
#include "dataflow/serving/subnet_catalogue.hpp"
#include "dataflow/thread_pool.hpp"
#include "dataflow/text/tokenizer.hpp"
#include "dataflow/experiment/topology.hpp"
#include "dataflow/experiment/trace.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

// The command being run, for "see strata CMD --help" after a usage error.
std::string current_command = "help";

// Progress and diagnostics: stderr, unless the command runs with --quiet (results stay on stdout).
bool quiet_logs = false;
template <class... Ts>
void say(const char* fmt, Ts... xs) {
  if (!quiet_logs) std::fprintf(stderr, fmt, xs...);
}

// Options every model-loading command takes: --threads N (kernel threads; 0: one per core) and
// --max-memory SIZE (the memory budget models are checked against before they are allocated).
void apply_common(const args& a) {
  if (a.has("weights")) {  // over STRATA_WEIGHTS (read at start)
    auto t = parse_dtype(a.str("weights"));
    if (!t) throw usage_error("--weights: " + t.message());
    set_default_load_options({true, *t});
    // Node processes this one spawns (serve/autoscale --nodes) hold the same type as it does.
    ::setenv("STRATA_WEIGHTS", to_string(*t), 1);
  }
  if (long t = a.integer("threads", 0, 0, 1024); t > 0) set_default_threads(size_t(t));  // not every command has it
  if (a.has("max-memory")) {
    auto b = parse_bytes(a.str("max-memory"));
    if (!b || *b == 0) throw usage_error("--max-memory: " + (b ? std::string("must be positive") : b.message()));
    set_memory_budget(*b);
  } else if (const char* env = std::getenv("STRATA_MAX_MEMORY")) {
    // An environment setting is checked like the flag: a typo must not silently mean "all RAM".
    auto b = parse_bytes(env);
    if (!b || *b == 0) throw usage_error("STRATA_MAX_MEMORY: " + (b ? std::string("must be positive") : b.message()));
  }
}

struct actor_runtime {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  actor_runtime() {
    register_strata_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

// A prompt's text as the user wrote it: its tokens decoded, without the BOS the encoder put first.
std::string prompt_text(const tokenizer& tok, const std::vector<int32_t>& prompt) {
  size_t skip = !prompt.empty() && prompt[0] == 1 ? 1 : 0;
  return tok.decode_all(std::vector<int>(prompt.begin() + long(skip), prompt.end()));
}

struct job_result {
  std::string prompt;
  std::string text;
  completion c;
  std::string error;
};

// Runs `prompts` concurrently through a router over `shards`. The results go to stdout: one
// request's text streamed as it comes, several requests' texts each after the run (token ids for
// a model without a tokenizer). The pipeline, the per-request table and the totals are logs (say).
int run_generation(const model_ptr& m, const tokenizer* tok, const std::vector<std::vector<int32_t>>& prompts,
                   const std::vector<std::string>& labels, const std::string& shard_spec,
                   const std::string& device_spec, int steps, float temperature, float top_p, uint64_t seed,
                   const subnet& sub) {
  const bool stream = prompts.size() == 1 && tok;
  auto shards = parse_shards(shard_spec, m->config.n_layers);
  if (!shards) return fail(shards.message());
  auto devices = parse_devices(device_spec, shards->size());
  if (!devices) return fail(devices.message());
  actor_runtime rt;
  stop_guard guard;
  auto p = spawn_pipeline(*rt.sys, m, *shards, *devices);
  if (!p) return fail(p.message());
  guard.pipelines.push_back(*p);
  auto router = spawn_router(*rt.sys, m, p->path);
  guard.actors.push_back(router);
  say("model %s: %s\npipeline: head -> %s -> tail (%zu shard actors on %s), %zu concurrent request(s)\n",
      m->name.c_str(), m->config.describe().c_str(), to_string(*shards).c_str(), shards->size(), device_spec.c_str(),
      prompts.size());
  if (stream) {  // the prompt's text first, then the generation
    std::fputs(prompt_text(*tok, prompts[0]).c_str(), stdout);
    std::fflush(stdout);
  }
  std::vector<job_result> results(prompts.size());
  std::mutex out_mu;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      generate_request req;
      req.prompt = prompts[i];
      req.max_new_tokens = steps;
      req.temperature = temperature;
      req.top_p = top_p;
      req.seed = seed + i;
      req.sub = sub;
      int32_t prev = req.prompt.back();
      auto r = generate(*rt.sys, router, req, [&](int32_t t) {
        if (stream) {
          std::lock_guard<std::mutex> g(out_mu);
          std::fputs(tok->decode(prev, t).c_str(), stdout);
          std::fflush(stdout);
        }
        prev = t;
        return true;
      });
      results[i].prompt = labels[i];
      if (!r) {
        results[i].error = r.message();
        return;
      }
      results[i].c = std::move(*r);
      if (results[i].c.result.finish_reason == "error") {  // a stage failed mid-generation
        results[i].error = results[i].c.result.error;
        return;
      }
      if (tok) {
        std::vector<int32_t> all = prompts[i];
        all.insert(all.end(), results[i].c.tokens.begin(), results[i].c.tokens.end());
        results[i].text = prompt_text(*tok, all);
      } else {
        for (auto t : results[i].c.tokens) results[i].text += (results[i].text.empty() ? "" : " ") + std::to_string(t);
      }
    });
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stream) std::printf("\n");
  size_t total = 0;
  int failed = 0;
  for (auto& r : results) {
    failed += r.error.empty() ? 0 : 1;
    total += r.error.empty() ? size_t(r.c.result.generated_tokens) : 0;
  }
  if (!stream)
    for (size_t i = 0; i < results.size(); ++i)
      if (results[i].error.empty()) std::printf("[%zu] %s\n\n", i, results[i].text.c_str());
  std::fflush(stdout);
  for (size_t i = 0; i < results.size(); ++i)
    if (!results[i].error.empty()) std::fprintf(stderr, "strata: error: request %zu: %s\n", i, results[i].error.c_str());
  say("\n%-4s %-28s %7s %7s %-9s %9s %9s\n", "req", "prompt", "prompt", "tokens", "finish", "ttft ms",
      "tok/s");
  for (size_t i = 0; i < results.size(); ++i) {
    auto& r = results[i];
    if (!r.error.empty()) {
      say("%-4zu %-28.28s error\n", i, r.prompt.c_str());
      continue;
    }
    auto& res = r.c.result;
    double rate = res.total_us > 0 ? res.generated_tokens / (double(res.total_us) / 1e6) : 0.0;
    say("%-4zu %-28.28s %7d %7d %-9s %9.1f %9.1f\n", i, ("\"" + r.prompt + "\"").c_str(),
        res.prompt_tokens, res.generated_tokens, res.finish_reason.c_str(), double(res.ttft_us) / 1000.0,
        rate);
  }
  say("%zu tokens from %zu requests in %.2f s: %.0f tokens/s aggregate%s\n", total, results.size(),
      secs, double(total) / secs, failed ? " (some requests failed)" : "");
  stop_pipeline(*p);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  return failed ? 1 : 0;
}

expected<std::vector<int32_t>> parse_token_list(const std::string& s, const model& m) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    auto part = s.substr(i, j - i);
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0') return make_error("bad token id '" + part + "' in --prompt-tokens");
    if (v < 0 || v >= m.config.vocab_size)
      return make_error("token id " + part + " outside the vocabulary of " + std::to_string(m.config.vocab_size));
    out.push_back(int32_t(v));
    i = j + 1;
  }
  if (out.empty()) return make_error("--prompt-tokens is empty");
  return out;
}

// strata generate --logits FILE: every generated position's full logits (before sampling) and
// the token drawn from them, as JSON, so the forward pass can be compared with other engines.
// The plain forward pass (generate_reference) gives the same tokens as the actor pipeline.
int write_logits(const model& m, const tokenizer* tok, const std::vector<int32_t>& prompt, int steps,
                 const sampling_params& sp, const std::string& path, const subnet& sub) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return fail("--logits: cannot write " + path + ": " + std::strerror(errno));
  std::fprintf(f, "{\"vocab_size\": %d, \"prompt_tokens\": [", m.config.vocab_size);
  for (size_t i = 0; i < prompt.size(); ++i) std::fprintf(f, "%s%d", i ? ", " : "", prompt[i]);
  std::fprintf(f, "],\n \"positions\": [");
  int count = 0;
  std::string text;
  auto out = generate_reference(m, std::vector<int>(prompt.begin(), prompt.end()), steps, sp,
                                [&](int position, const float* logits, int token) {
                                  std::fprintf(f, "%s\n  {\"position\": %d, \"token\": %d, \"logits\": [",
                                               count++ ? "," : "", position, token);
                                  // %.9g: every float reads back bit for bit.
                                  for (int i = 0; i < m.config.vocab_size; ++i)
                                    std::fprintf(f, "%s%.9g", i ? ", " : "", double(logits[i]));
                                  std::fprintf(f, "]}");
                                }, sub);
  std::fprintf(f, "\n ],\n \"tokens\": [");
  for (size_t i = 0; i < out.size(); ++i) std::fprintf(f, "%s%d", i ? ", " : "", out[i]);
  std::fprintf(f, "]}\n");
  bool ok = std::ferror(f) == 0;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) return fail("--logits: writing " + path + " failed");
  int prev = prompt.empty() ? 1 : prompt.back();
  if (tok) {
    text = prompt_text(*tok, prompt);
    for (int t : out) text += tok->decode(std::exchange(prev, t), t);
  }
  std::printf("%s\n", text.c_str());
  std::fprintf(stderr, "%d position(s) of %d logits written to %s\n", count, m.config.vocab_size, path.c_str());
  return 0;
}

int cmd_generate(int argc, char** argv, bool demo) {
  auto a = args::parse(argc, argv, 2, strata_command(demo ? "demo" : "generate"));
  if (!a) return fail(a.message());
  std::string path = demo ? a->str("model", default_model_dir()) : a->str("model");
  if (path.empty()) return fail("generate needs --model PATH");
  const long steps = a->integer("steps", 1, 1 << 24);
  const double temp = a->number("temperature", 0, 100);
  const double top_p = a->number("top-p", 0, 1);
  const long seed = a->integer("seed", 0, LONG_MAX);
  const long n = demo ? 1 : a->integer("n", 1, 1024);
  quiet_logs = a->has("quiet");
  apply_common(*a);
  auto t0 = std::chrono::steady_clock::now();
  auto m = load_model(path);
  if (!m) return fail(with_data_hint(path, m.message()));
  say("loaded %s in %.1f ms\n", path.c_str(),
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  std::unique_ptr<tokenizer> tok;
  std::string tok_path = a->str("tokenizer", find_tokenizer(path));
  if (!tok_path.empty()) {
    auto t = tokenizer::load(tok_path, (*m)->config.vocab_size);
    if (!t) return fail(t.message());
    tok = std::make_unique<tokenizer>(std::move(*t));
  }
  subnet sub;
  if (!demo && a->has("subnet")) {
    auto s = subnet_named(a->str("subnet"), (*m)->config);
    if (!s) return fail("--subnet: " + s.message());
    sub = *s;
  }
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> labels;
  if (demo) {
    if (!tok) return fail("the demo needs the model's tokenizer");
    for (const char* p : {"", "Once upon a time, Tom", "The little cat", "Lily and Ben went to the park",
                          "One day, a big dog", "Sam had a red ball"}) {
      auto ids = tok->encode(p, true);
      prompts.emplace_back(ids.begin(), ids.end());
      labels.push_back(p);
    }
    return run_generation(*m, tok.get(), prompts, labels, a->str("shards"), a->str("devices"), int(steps),
                          float(temp), float(top_p), uint64_t(seed), sub);
  }
  std::vector<int32_t> prompt;
  if (a->has("prompt-tokens")) {
    auto p = parse_token_list(a->str("prompt-tokens"), **m);
    if (!p) return fail(p.message());
    prompt = *p;
  } else {
    if (!tok)
      return fail("no tokenizer found next to " + path + ": pass --tokenizer FILE or --prompt-tokens 1,2,3");
    auto ids = tok->encode(a->str("prompt"), true);
    prompt.assign(ids.begin(), ids.end());
  }
  if (a->has("logits")) {
    if (n != 1 || a->has("shards") || a->has("devices"))
      return fail("--logits runs one sequence through the plain forward pass: no --n, --shards or --devices");
    return write_logits(**m, tok.get(), prompt, int(steps), {float(temp), float(top_p), uint64_t(seed)},
                        a->str("logits"), sub);
  }
  for (long i = 0; i < n; ++i) {
    prompts.push_back(prompt);
    labels.push_back(a->str("prompt", a->str("prompt-tokens")));
  }
  return run_generation(*m, tok.get(), prompts, labels, a->str("shards"), a->str("devices"), int(steps),
                        float(temp), float(top_p), uint64_t(seed), sub);
}

// strata subnets: the subnet catalogue of a model (dataflow/serving/subnet_catalogue.hpp).
int run_subnets(const args& a) {
  apply_common(a);
  auto m = load_model(a.str("model"));
  if (!m) return fail(with_data_hint(a.str("model"), m.message()));
  const auto& c = (*m)->config;
  std::vector<subnet_spec> space;
  if (a.str("space", "default") == "default") {
    space = default_subnet_space(c);
  } else {
    for (auto& name : split_list(a.str("space"))) {
      auto s = parse_subnet_spec(name);
      if (!s) throw usage_error("--space: " + s.message());
      space.push_back(*s);
    }
  }
  std::vector<int> batches = int_list("batches", a.str("batches", "1,4,16"), 1, 4096, "a batch size");
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  const int steps = int(a.integer("steps", 1, 1000));
  const int context = int(a.integer("context", 1, c.seq_len - 1));
  const int samples = int(a.integer("samples", 1, 10000));
  const int length = int(a.integer("sample-length", 2, c.seq_len));
  const uint64_t seed = uint64_t(a.integer("seed", 0, LONG_MAX));
  const double layer_ms = a.number("device-layer-ms", 0, 1e6), row_ms = a.number("device-row-ms", 0, 1e6);
  const bool emulated = layer_ms > 0 || row_ms > 0;
  subnet_catalogue cat;
  cat.model = (*m)->name;
  cat.device = "cpu, " + std::to_string(default_pool().concurrency()) + " kernel threads";
  cat.context = context;
  cat.samples = samples;
  cat.sample_length = length;
  // Quality against the model itself, or against --reference (an elastic supernet against the
  // model it was trained from: its full subnet is then measured too).
  model_ptr ref = *m;
  if (a.has("reference")) {
    auto r = load_model(a.str("reference"));
    if (!r) return fail("--reference: " + with_data_hint(a.str("reference"), r.message()));
    const auto& rc = (*r)->config;
    if (rc.vocab_size != c.vocab_size || rc.bos_id != c.bos_id || rc.seq_len < length)
      return fail("--reference: " + (*r)->name + " (vocabulary " + std::to_string(rc.vocab_size) + ", BOS " +
                  std::to_string(rc.bos_id) + ", context " + std::to_string(rc.seq_len) + ") cannot score " + (*m)->name +
                  "'s text (vocabulary " + std::to_string(c.vocab_size) + ", BOS " + std::to_string(c.bos_id) +
                  ", " + std::to_string(length) + " tokens)");
    ref = *r;
    cat.reference = ref->name;
  }
  const bool own = ref == *m;
  say("sampling %d sequences of %d tokens from %s for quality\n", samples, length,
      own ? "the whole model" : ref->name.c_str());
  auto set = quality_set(*ref, samples, length, seed);
  std::vector<std::vector<float>> full;
  for (auto& seq : set) full.push_back(*sequence_logits(*ref, seq));
  if (!own) {  // the reference's own perplexity on its text, the floor the subnets are read against
    subnet_profile rp;
    if (auto st = score_subnet(*ref, subnet{}, set, full, rp); !st) return fail(st.message());
    cat.full_ppl = rp.ppl;
  }
  for (size_t i = 0; i < space.size(); ++i) {
    auto sub = resolve_subnet(space[i], c);
    if (!sub) return fail("--space: " + sub.message());
    subnet_profile p;
    p.spec = to_string(space[i]);
    if (cat.find(p.spec)) continue;
    p.sub = *sub;
    p.share = subnet_share(p.sub, c);
    say("[%zu/%zu] %s\n", i + 1, space.size(), p.spec.c_str());
    for (int b : batches) {
      p.step_ms.emplace_back(b, time_decode_step_ms(**m, p.sub, b, context, steps));
      if (emulated) {
        device_charge charge(c);
        charge.add(p.sub, 0, c.n_layers, size_t(b));
        p.emulated_ms.emplace_back(b, charge.cost(layer_ms, row_ms));
      }
    }
    if (auto st = score_subnet(**m, p.sub, set, full, p); !st) return fail(st.message());
    if (p.sub.full() && own) cat.full_ppl = p.ppl;
    cat.subnets.push_back(std::move(p));
  }
  mark_pareto(cat, emulated);
  std::printf("%-12s %-14s %5s %3s %6s", "subnet", "layers", "ffn", "kv", "params");
  for (int b : batches) std::printf(" %9s", ("ms@" + std::to_string(b)).c_str());
  if (emulated) std::printf(" %9s", "emu ms@1");
  std::printf(" %6s %7s %8s %s\n", "top-1", "KL", "ppl", "pareto");
  for (auto& p : cat.subnets) {
    std::string layers;
    for (int l = 0; l < c.n_layers; ++l)
      if (p.sub.runs(l)) layers += (layers.empty() ? "" : ",") + std::to_string(l);
    std::printf("%-12s %-14s %5d %3d %5.0f%%", p.spec.c_str(), layers.c_str(), p.sub.ffn ? p.sub.ffn : c.hidden_dim,
                p.sub.kv_heads ? p.sub.kv_heads : c.n_kv_heads, p.share * 100);
    for (auto& [_, ms] : p.step_ms) std::printf(" %9.3f", ms);
    if (emulated) std::printf(" %9.3f", p.latency_ms(1, true));
    std::printf(" %6.3f %7.3f %8.2f %s\n", p.top1, p.kl, p.ppl, p.pareto ? "*" : "");
  }
  std::printf("quality on %zu sequences sampled from %s (%d tokens, seeds %llu..), teacher-forced; %s "
              "perplexity %.2f; * = Pareto-optimal by %s latency at batch 1 and top-1\n",
              set.size(), own ? "the whole model" : ref->name.c_str(), length, (unsigned long long)seed,
              own ? "the whole model's" : "its", cat.full_ppl, emulated ? "emulated" : "measured");
  if (a.has("json"))
    if (auto st = write_file(a.str("json"), catalogue_json(cat) + "\n", "the catalogue"); !st) return fail("--json: " + st.message());
  if (a.has("svg"))
    if (auto st = write_pareto_svg(a.str("svg"), cat, emulated); !st) return fail("--svg: " + st.message());
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  auto a = args::parse(argc, argv, 2, strata_command("inspect"));
  if (!a) return fail(a.message());
  apply_common(*a);
  if (a->has("cpu")) {
    if (a->has("model") || a->has("verify") || a->has("write")) return fail("inspect --cpu takes no model options");
    const cpu_info& c = this_cpu();
    std::printf("cpu: %s (%s)\n", c.brand.empty() ? "unknown" : c.brand.c_str(), c.vendor.c_str());
    std::printf("  flags: %s\n", c.flags().c_str());
    std::string levels;
    for (int l = 0; l <= int(c.best()); ++l) levels += std::string(l ? ", " : "") + to_string(isa(l));
    std::printf("  levels: %s\n", levels.c_str());
    const char* env = std::getenv("STRATA_ISA");
    std::printf("  kernels run at: %s%s\n", to_string(active_isa()),
                env && *env ? (std::string(" (STRATA_ISA=") + env + ")").c_str() : " (the best this CPU has)");
    if (active_isa() == isa::amx)
      std::printf("  amx: bf16 weights on AMX tiles (TDPBF16PS); other types as at avx512-bf16\n");
    return 0;
  }
  if (!a->has("model")) return fail("inspect needs --model PATH (or --cpu)");
  auto m = load_model(a->str("model"));
  if (!m) return fail(m.message());
  auto buf = build_manifest(**m);
  auto view = read_manifest(buf.data(), buf.size());
  if (!view) return fail(view.message());
  std::printf("%s", format_manifest(*view).c_str());
  std::printf("  manifest: %zu bytes of flatbuffers\n", buf.size());
  if (a->has("write")) {
    FILE* f = std::fopen(a->str("write").c_str(), "wb");
    if (!f || std::fwrite(buf.data(), 1, buf.size(), f) != buf.size()) return fail("cannot write " + a->str("write"));
    std::fclose(f);
  }
  if (a->has("verify")) {
    fs::path p(a->str("model"));
    auto dir = fs::is_directory(p) ? p : p.parent_path();
    auto st = verify_manifest(*view, dir.string());
    if (!st) return fail(st.message());
    std::printf("  verified: every tensor's bytes match its checksum\n");
  }
  return 0;
}

int run_gen_model(const args& a) {
  if (!a.has("out")) return fail("gen-model needs --out DIR");
  model_config c;
  struct field {
    const char* key;
    int* dst;
  };
  for (auto f : {field{"dim", &c.dim}, field{"hidden", &c.hidden_dim}, field{"layers", &c.n_layers},
                 field{"heads", &c.n_heads}, field{"kv-heads", &c.n_kv_heads}, field{"vocab", &c.vocab_size},
                 field{"seq-len", &c.seq_len}})
    *f.dst = int(a.integer(f.key, 0, INT32_MAX));
  if (c.hidden_dim == 0) c.hidden_dim = ((8 * c.dim / 3) + 63) / 64 * 64;
  if (c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rope = rope_style::rotate_half;
  c.tied_embeddings = !a.has("untied");
  if (auto st = c.validate(); !st) return fail(st.message());
  auto dt = parse_dtype(a.str("dtype"));
  if (!dt) return fail(dt.message());
  const long seed = a.integer("seed", 0, LONG_MAX);
  const long shard_mb = a.integer("shard-mb", 1, 1 << 30);
  if (auto st = c.fits_memory(); !st) return fail(st.message());
  auto m = make_random_model(c, uint64_t(seed), fs::path(a.str("out")).filename().string());
  if (auto st = save_hf(*m, a.str("out"), *dt, uint64_t(shard_mb) << 20); !st) return fail(st.message());
  std::printf("wrote %s: %s, %s\n", a.str("out").c_str(), c.describe().c_str(), to_string(*dt));
  return 0;
}

int cmd_convert(int argc, char** argv) {
  auto a = args::parse(argc, argv, 2, strata_command("convert"));
  if (!a) return fail(a.message());
  apply_common(*a);
  if (!a->has("model") || !a->has("out")) return fail("convert needs --model PATH and --out DIR");
  auto m = load_model(a->str("model"));
  if (!m) return fail(m.message());
  auto dt = parse_dtype(a->str("dtype"));
  if (!dt) return fail(dt.message());
  model_ptr out = *m;
  if (a->has("subnet")) {
    auto sub = subnet_named(a->str("subnet"), out->config);
    if (!sub) return fail("--subnet: " + sub.message());
    out = extract_subnet(*out, *sub);
  }
  if (auto st = save_hf(*out, a->str("out"), *dt); !st) return fail(st.message());
  auto tok = find_tokenizer(a->str("model"));
  if (!tok.empty()) fs::copy_file(tok, fs::path(a->str("out")) / "tokenizer.bin", fs::copy_options::overwrite_existing);
  std::printf("wrote %s (%s)\n", a->str("out").c_str(), to_string(*dt));
  return 0;
}

// Requests in flight over time, from the records (a step series for the timeline plot).
step_series in_flight(const std::vector<request_record>& records) {
  std::vector<std::pair<double, int>> ev;
  for (auto& r : records) {
    ev.push_back({r.arrival, +1});
    ev.push_back({r.done >= 0 ? r.done : r.arrival, -1});
  }
  std::sort(ev.begin(), ev.end());
  step_series s{"requests in flight", {}};
  int n = 0;
  for (auto& [t, d] : ev) s.points.push_back({t, double(n += d)});
  return s;
}

// The trace a replay-like command asks for: a file (format guessed or --format) or a gamma
// process, shaped by the window/speed options and clipped to the context (0: not clipped; gamma
// lengths then as for a 512-token context).
expected<trace> trace_from_args(const args& a, int context) {
  int seq_len = context > 0 ? context : 512;
  expected<trace> tr = make_error("no trace");
  if (a.str("trace") == "gamma") {
    gamma_options g;
    g.n = size_t(a.integer("n", 1, 10'000'000));
    g.rate = a.positive("gamma-rate", 1e6);
    g.burstiness = a.positive("burstiness", 1e3);
    g.ramp_to = a.number("ramp-to", 0, 1e6);
    g.ramp_accel = a.positive("ramp-accel", 1e6);
    if (a.has("ramp-accel") && !a.has("ramp-to")) throw usage_error("--ramp-accel needs --ramp-to (the rate to ramp to)");
    g.seed = uint64_t(a.integer("seed", 0, LONG_MAX));
    g.prompt_max = std::min(256, seq_len / 2);
    g.output_max = std::min(128, seq_len / 4);
    g.prompt_min = std::min(g.prompt_min, g.prompt_max);
    g.output_min = std::min(g.output_min, g.output_max);
    tr = gamma_trace(g);
  } else {
    for (const char* k : {"n", "gamma-rate", "burstiness", "ramp-to", "ramp-accel"})
      if (a.has(k)) throw usage_error(std::string("--") + k + " shapes a gamma process; it does not apply to --trace FILE");
    auto fmt = a.has("format") ? parse_trace_format(a.str("format")) : guess_trace_format(a.str("trace"));
    if (!fmt) return fmt.err();
    trace_options to;
    to.strict = a.has("strict");
    tr = load_trace(a.str("trace"), *fmt, to);
  }
  if (!tr) return tr.err();
  shape_options so;
  so.start = a.number("start", 0, 1e13);
  so.duration = a.number("duration", 0, 1e13);
  so.max_requests = size_t(a.integer("max-requests", 0, 100'000'000));
  so.speedup = a.positive("speedup", 1e6);
  so.target_rate = a.number("rate", 0, 1e6);
  so.context = context;
  so.max_prompt = int(a.integer("max-prompt", 0, 1 << 24));
  so.max_output = int(a.integer("max-output", 0, 1 << 24));
  auto shaped = shape_trace(*tr, so);
  if (!shaped) return shaped.err();
  say("trace: %zu requests read, %zu lines skipped; replaying %zu over %.1f s (%.2f req/s)\n",
      tr->requests.size(), tr->skipped.size(), shaped->requests.size(), shaped->requests.back().t,
      mean_rate(*shaped));
  for (size_t i = 0; i < std::min<size_t>(3, tr->skipped.size()); ++i)
    say("  skipped %s\n", tr->skipped[i].c_str());
  return shaped;
}

// Replay settings for the CLI: prompts from the model's vocabulary, `lines` progress lines.
replay_options printing_replay(const model& m, const args& a, size_t requests, size_t lines) {
  replay_options o;
  o.vocab_size = m.config.vocab_size;
  o.seed = uint64_t(a.integer("seed", 0, LONG_MAX));
  o.progress_every = std::max<size_t>(1, requests / lines);
  o.progress = [](size_t done, size_t total, double t) {
    say("  t=%6.1f s  %zu/%zu requests finished\n", t, done, total);
  };
  if (a.has("verbose")) {
    if (a.has("quiet")) throw usage_error("--quiet and --verbose exclude each other");
    o.finished = [](size_t i, const request_record& r) {
      auto rel = [&](double t) { return t >= 0 ? (t - r.arrival) * 1e3 : -1.0; };
      say("  request %zu: arrived %.3f s, first token +%.1f ms, done +%.1f ms, %d/%d tokens%s%s\n", i, r.arrival,
          rel(r.first_token), rel(r.done), r.generated, r.output_tokens, r.ok ? "" : ", error: ", r.error.c_str());
    };
  }
  return o;
}

// The end of a replay-like command: the first failure, --svg and --json; exit 1 when a request
// failed.
int replay_outputs(const args& a, const std::string& what, const std::vector<request_record>& records,
                   const std::string& json) {
  bool failed = false;
  for (auto& q : records)
    if (!q.ok) {
      std::printf("  first failure: %s\n", q.error.c_str());
      failed = true;
      break;
    }
  if (a.has("svg")) {
    auto st = write_timeline_svg(a.str("svg"), what + " of " + a.str("trace"), records, {in_flight(records)});
    if (!st) return fail(st.message());
    std::printf("  timeline written to %s\n", a.str("svg").c_str());
  }
  if (a.has("json")) {
    if (auto st = write_file(a.str("json"), json, "JSON results"); !st) return fail(st.message());
    std::printf("  results written to %s\n", a.str("json").c_str());
  }
  return failed ? 1 : 0;
}

int run_replay(const args& a) {
  if (!a.has("model") || !a.has("trace")) return fail("replay needs --model PATH and --trace FILE|gamma");
  apply_common(a);
  // Every value is checked before the replay starts, not after it.
  replay_spec spec;
  spec.slo.ttft_s = a.positive("ttft-slo-ms", 1e9) / 1000;
  spec.slo.tbt_s = a.positive("tbt-slo-ms", 1e9) / 1000;
  spec.ro.max_running = int(a.integer("max-running", 1, 1 << 16));
  spec.ro.max_batch_tokens = int(a.integer("max-batch-tokens", 1, 1 << 24));
  auto m = load_model(a.str("model"));
  if (!m) return fail(m.message());
  spec.model = *m;
  auto shaped = trace_from_args(a, (*m)->config.seq_len);
  if (!shaped) return fail(shaped.message());
  spec.requests = std::move(*shaped);
  auto shards = parse_shards(a.str("shards"), (*m)->config.n_layers);
  if (!shards) return fail(shards.message());
  spec.shards = *shards;
  spec.replay = printing_replay(**m, a, spec.requests.requests.size(), 10);
  auto r = run_replay_experiment(spec);
  if (!r) return fail(r.message());
  std::printf("\n%s", r->summary.table("replay of " + a.str("trace") + " on " + (*m)->name + ", shards " +
                                     to_string(*shards)).c_str());
  return replay_outputs(a, "replay", r->records, results_json(*r));
}


int run_bench_serve_cmd(const args& a) {
  if (!a.has("url") || !a.has("trace")) return fail("bench-serve needs --url URL and --trace FILE|gamma");
  bench_serve_spec spec;
  auto url = parse_http_url(a.str("url"));
  if (!url) return fail(url.message());
  spec.url = *url;
  spec.vocab = int(a.integer("vocab", 4, 1 << 30));
  spec.seed = uint64_t(a.integer("seed", 0, LONG_MAX));
  spec.slo.ttft_s = a.positive("ttft-slo-ms", 1e9) / 1000;
  spec.slo.tbt_s = a.positive("tbt-slo-ms", 1e9) / 1000;
  spec.http.timeout = std::chrono::milliseconds(int64_t(a.positive("timeout-s", 1e6) * 1000));
  spec.http.max_in_flight = size_t(a.integer("max-concurrency", 0, 1 << 20));
  spec.http.api_key = a.str("api-key", std::getenv("STRATA_API_KEY") ? std::getenv("STRATA_API_KEY") : "");
  if (a.has("slo-ms")) {
    spec.slo_ms = a.positive("slo-ms", 1e9);
    if (!a.has("ttft-slo-ms")) spec.slo.ttft_s = spec.slo_ms / 1000;
  }
  if (a.has("quiet") && a.has("verbose")) throw usage_error("--quiet and --verbose exclude each other");
  auto served = endpoint_models(spec.url, spec.http);
  if (!served) return fail(served.message());
  // The models by name; their subnets (or adapters) counted, not listed.
  std::string names;
  size_t children = 0;
  for (auto& m : *served)
    if (m.parent.empty()) names += (names.empty() ? "" : ", ") + m.id;
    else ++children;
  if (children) names += " and " + std::to_string(children) + " subnets of them (NAME@SPEC)";
  spec.models = a.has("model") ? split_list(a.str("model")) : std::vector<std::string>{served->front().id};
  int context = 0;
  for (auto& m : spec.models) {
    // A subnet need not be listed (any NAME@SPEC of a listed model may be asked for).
    const std::string base = split_subnet_name(m).first;
    auto it = std::find_if(served->begin(), served->end(), [&](auto& e) { return e.id == m; });
    if (it == served->end()) it = std::find_if(served->begin(), served->end(), [&](auto& e) { return e.id == base; });
    if (it == served->end()) return fail("--model: '" + m + "' is not served at " + spec.url.str() + " (it serves " + names + ")");
    if (it->context > 0) context = context ? std::min(context, it->context) : it->context;
  }
  say("endpoint %s serves %s; asking for %s\n", spec.url.str().c_str(), names.c_str(), a.str("model", served->front().id).c_str());
  auto shaped = trace_from_args(a, context);
  if (!shaped) return fail(shaped.message());
  spec.requests = std::move(*shaped);
  size_t n = spec.requests.requests.size();
  spec.progress_every = std::max<size_t>(1, n / 10);
  spec.progress = [](size_t done, size_t total, double t) { say("  t=%6.1f s  %zu/%zu requests finished\n", t, done, total); };
  if (a.has("verbose"))
    spec.finished = [](size_t i, const request_record& r) {
      auto rel = [&](double t) { return t >= 0 ? (t - r.arrival) * 1e3 : -1.0; };
      say("  request %zu (%s): sent %.3f s, first token +%.1f ms, done +%.1f ms, %d/%d tokens%s%s\n", i, r.model.c_str(),
          r.arrival, rel(r.first_token), rel(r.done), r.generated, r.output_tokens, r.ok ? "" : ", error: ",
          r.error.c_str());
    };
  auto r = run_bench_serve(spec);
  if (!r) return fail(r.message());
  std::printf("\n%s", r->summary.table("bench-serve of " + a.str("trace") + " against " + spec.url.str()).c_str());
  if (r->per_model.size() > 1)
    for (auto& [m, s] : r->per_model) std::printf("%s", s.table("model " + m).c_str());
  std::string st;
  for (auto& [code, count] : r->statuses)
    st += (st.empty() ? "" : ", ") + (code ? std::to_string(code) : std::string("no response")) + " x" + std::to_string(count);
  std::printf("  HTTP statuses: %s\n", st.c_str());
  if (!r->subnets.empty()) {
    // Mean served quality: each request's tokens at the profiled quality of the subnet that made
    // them (SlackFit may narrow some steps; without that note, its chosen subnet's; whole model 1).
    std::string chosen;
    for (auto& [sub, count] : r->subnets) chosen += (chosen.empty() ? "" : ", ") + sub + " x" + std::to_string(count);
    auto quality_of = [&](const std::string& sub) {
      const std::string id = split_subnet_name(spec.models[0]).first + "@" + sub;
      auto it = std::find_if(served->begin(), served->end(), [&](auto& e) { return e.id == id; });
      return sub == "full" ? 1.0 : it != served->end() ? it->quality : -1.0;
    };
    double quality = 0;
    size_t rated = 0;
    for (auto& rec : r->records) {
      if (rec.subnet.empty()) continue;
      double sum = 0, tokens = 0;
      for (auto& [sub, n] : rec.served)
        if (double q = quality_of(sub); q >= 0) sum += q * n, tokens += n;
      double q = tokens > 0 ? sum / tokens : quality_of(rec.subnet);
      if (q >= 0) quality += q, ++rated;
    }
    std::printf("  subnets chosen: %s\n", chosen.c_str());
    if (rated) std::printf("  mean quality (profiled top-1 agreement) of %zu requests: %.3f\n", rated, quality / double(rated));
  }
  return replay_outputs(a, "bench-serve", r->records, results_json(spec, *r));
}

expected<scaling_setup> scaling_from_args(const args& a) {
  scaling_setup s;
  auto& k = s.knobs;
  k.min_instances = int(a.integer("min", 0, 1024));
  k.max_instances = int(a.integer("max", std::max(4, k.min_instances), 1, 1024));
  k.queue_per_instance = a.positive("queue", 1e6);
  k.ttft_slo_s = a.positive("ttft-slo-ms", 1e9) / 1000;
  k.tbt_slo_s = a.positive("tbt-slo-ms", 1e9) / 1000;
  k.keep_alive_s = a.number("keep-alive-s", 0, 1e6);
  if (k.max_instances < k.min_instances) return make_error("need --min <= --max");
  k.min_share = a.positive("min-share", 1);
  k.min_quality = a.number("min-quality", 0, 1);
  s.links.network_gb_s = a.positive("network-gbs", 1e5);
  s.links.local_host_gb_s = a.positive("host-gbs", 1e5);
  s.links.remote_gb_s = a.positive("remote-gbs", 1e5);
  s.so.layer_bytes = a.number("layer-mb", 0, 1e7) * 1e6;
  s.so.globals_bytes = a.number("globals-mb", 0, 1e7) * 1e6;
  s.so.device.layer_s = a.number("device-layer-ms", 0, 1e6) / 1000;
  s.so.device.per_row_s = a.number("device-row-ms", 0, 1e6) / 1000;
  std::string scheduler = a.str("scheduler");
  auto sch = find_route_scheduler(scheduler);
  if (!sch) throw usage_error("--scheduler: " + sch.message());
  s.so.split_candidates = sch->wants_splits;
  s.ro.queue_timeout = std::chrono::milliseconds(int64_t(a.number("queue-timeout-s", 0, 86400) * 1000));
  std::string migration = a.choice("migration", {"kv", "recompute", "off"});
  s.ro.max_running = int(a.integer("max-running", 1, 1 << 16));
  s.ro.scheduler = scheduler;
  s.ro.batch_scheduler = a.str("batch-scheduler");
  if (auto b = find_batch_scheduler(s.ro.batch_scheduler); !b) throw usage_error("--batch-scheduler: " + b.message());
  s.ro.recompute_migration = migration != "off";
  s.ro.kv_migration = migration == "kv";
  // The zigzag scheduler's cost model in ms: the emulated device's, and a hop between instances.
  s.ro.costs.per_layer = std::max(s.so.device.layer_s * 1e3, 0.01);
  s.ro.costs.per_row = s.so.device.per_row_s * 1e3;
  s.ro.costs.per_hop = 0.05;
  return s;
}

// The node options (node_opts in apps/commands.cpp) of autoscale and serve.
cluster_spec nodes_from_args(const args& a) {
  cluster_spec cs;
  cs.nodes = int(a.integer("nodes", 0, 64));
  cs.link_mbs = a.number("link-mbs", 0, 1e6);
  cs.chunk_bytes = uint64_t(a.integer("chunk-kb", 1, 1 << 20)) << 10;
  cs.transport = a.choice("transport", {"tcp", "sm"});
  cs.placement = split_list(a.str("placement"));
  if (a.has("placement") && cs.placement.empty()) throw usage_error("--placement names no node");
  return cs;
}

// One --model of serve: [NAME=]PATH, loaded with its tokenizer.
struct serve_model {
  std::string name, path;
  model_ptr m;
  std::optional<tokenizer> tok;
  std::shared_ptr<const subnet_catalogue> catalogue;
};

// A model's subnet catalogue: `file` (from --subnet-catalogue), else subnets.json beside the model
// (the catalogue travels with it), else none.
expected<std::shared_ptr<const subnet_catalogue>> load_catalogue(const serve_model& sm, std::string file) {
  if (file.empty()) {
    std::error_code ec;
    auto dir = fs::is_directory(sm.path, ec) ? fs::path(sm.path) : fs::path(sm.path).parent_path();
    if (!fs::exists(dir / "subnets.json", ec)) return std::shared_ptr<const subnet_catalogue>{};
    file = (dir / "subnets.json").string();
  }
  auto text = read_file(file, 16 << 20, "subnet catalogue");
  if (!text) return text.err();
  auto c = parse_catalogue(*text, sm.m->config, file);
  if (!c) return c.err();
  return std::make_shared<const subnet_catalogue>(std::move(*c));
}

expected<serve_model> load_serve_model(const std::string& spec, const args& a, bool several) {
  serve_model out;
  auto eq = spec.find('=');
  // A NAME= prefix only where it cannot be part of a path (no '/' before the '=').
  if (eq != std::string::npos && spec.find('/') > eq) {
    out.name = spec.substr(0, eq);
    out.path = spec.substr(eq + 1);
    if (out.name.empty()) return make_error("--model " + spec + ": empty model name before '='");
  } else {
    out.path = spec;
  }
  if (out.name.empty()) out.name = several ? "" : a.str("served-model-name");
  if (out.name.empty()) out.name = fs::path(out.path).filename().string();
  if (out.name.empty()) out.name = fs::path(out.path).parent_path().filename().string();
  auto m = load_model(out.path);
  if (!m) return m.err();
  out.m = *m;
  auto tok_path = several ? find_tokenizer(out.path) : a.str("tokenizer", find_tokenizer(out.path));
  if (tok_path.empty())
    return make_error("no tokenizer found next to " + out.path + (several ? "" : " (pass --tokenizer FILE)"));
  auto tok = tokenizer::load(tok_path, out.m->config.vocab_size);
  if (!tok) return tok.err();
  out.tok = std::move(*tok);
  return out;
}

// The options a model behind a front door may set for itself (--model-knobs NAME:K=V,...).
const std::vector<std::string> model_knob_keys = {"policy", "min", "max", "queue", "keep-alive-s", "queue-timeout-s",
                                                  "min-share", "ttft-slo-ms", "tbt-slo-ms", "max-running",
                                                  "max-waiting", "scheduler", "batch-scheduler", "migration",
                                                  "layer-mb", "globals-mb", "device-layer-ms", "device-row-ms",
                                                  "min-quality"};

// Each served model's options: the command's, with its --model-knobs on top. Names, keys and
// values are checked here, before anything starts; a bad value names the model.
std::map<std::string, args> per_model_args(const args& a, const std::vector<std::string>& names) {
  std::map<std::string, args> out;
  for (auto& n : names) out.emplace(n, a);
  for (auto& spec : a.values("model-knobs")) {
    auto colon = spec.find(':');
    if (colon == std::string::npos || colon == 0)
      throw usage_error("--model-knobs: expected NAME:KEY=VALUE,..., got '" + spec + "'");
    auto name = spec.substr(0, colon);
    auto it = out.find(name);
    if (it == out.end()) {
      std::string served;
      for (auto& n : names) served += (served.empty() ? "" : ", ") + n;
      throw usage_error("--model-knobs: no model '" + name + "' is served (" + served + ")");
    }
    auto pairs = split_list(spec.substr(colon + 1));
    if (pairs.empty()) throw usage_error("--model-knobs " + name + ": no KEY=VALUE");
    for (auto& kv : pairs) {
      auto eq = kv.find('=');
      auto key = kv.substr(0, eq);
      if (std::find(model_knob_keys.begin(), model_knob_keys.end(), key) == model_knob_keys.end()) {
        std::string known;
        for (auto& k : model_knob_keys) known += (known.empty() ? "" : ", ") + k;
        auto near = nearest_name(model_knob_keys, key);
        throw usage_error("--model-knobs " + name + ": unknown key '" + key + "'" +
                          (near.empty() ? "" : " (did you mean " + near + "?)") + " (known: " + known + ")");
      }
      if (eq == std::string::npos || eq + 1 == kv.size())
        throw usage_error("--model-knobs " + name + ": '" + key + "' needs a value (" + key + "=VALUE)");
      it->second.set(key, kv.substr(eq + 1));
    }
  }
  return out;
}

// One model's scaling setup and router options from its own options.
struct model_serving {
  scaling_setup setup;
  std::string policy;  // empty: a fixed pipeline (one model, no scaling)
};

model_serving model_serving_from(const args& a, const std::string& name, bool on_cluster) {
  try {
    auto s = scaling_from_args(a);
    if (!s) throw usage_error(s.message());
    model_serving out{*s, a.str("policy", on_cluster ? "blitz" : "")};
    // A server that can queue nothing rejects every request: at least one may wait.
    out.setup.ro.max_waiting = int(a.integer("max-waiting", 1, 1 << 20));
    out.setup.ro.max_batch_tokens = int(a.integer("max-batch-tokens", 1, 1 << 24));
    return out;
  } catch (const usage_error& e) {
    if (a.has("model-knobs")) throw usage_error("model " + name + ": " + e.what());
    throw;
  }
}

int run_serve(const args& a) {
  if (!a.has("model")) return fail("serve needs --model PATH");
  const auto specs = a.values("model");
  const bool several = specs.size() > 1;
  if (several && a.has("served-model-name"))
    throw usage_error("--served-model-name names the one model; with several, write --model NAME=PATH");
  if (several && a.has("tokenizer")) throw usage_error("--tokenizer is for one model; with several, each has its own next to it");
  // Every value is checked before the models load.
  http_options ho;
  ho.host = a.str("host");
  ho.port = int(a.integer("port", 0, 65535));
  ho.threads = int(a.integer("http-threads", 1, 256));
  ho.max_connections_per_client = int(a.integer("max-connections-per-client", 1, 1 << 16));
  ho.api_key = a.str("api-key", std::getenv("STRATA_API_KEY") ? std::getenv("STRATA_API_KEY") : "");
  if (a.has("api-key") && ho.api_key.empty()) throw usage_error("--api-key: must not be empty");
  ho.subnets = a.choice("subnets", {"on", "off"}) == "on";
  const double drain_s = a.number("drain-timeout-s", 0, 86400);
  // Where instances run: this process, node processes started here, or a running cluster.
  cluster_spec cs = nodes_from_args(a);
  cs.controller = a.str("controller");
  if (cs.nodes > 0 && !cs.controller.empty()) throw usage_error("--nodes and --controller exclude each other");
  const bool on_cluster = cs.nodes > 0 || !cs.controller.empty();
  if (a.has("tls") && cs.controller.empty()) throw usage_error("--tls needs --controller");
  cs.tls_dir = a.str("tls");
  if (!several && a.has("model-knobs")) throw usage_error("--model-knobs is for several models; with one, use the options");
  model_serving_from(a, "", on_cluster);  // the command's own values, checked before the models load
  apply_common(a);
  std::vector<serve_model> models;
  for (auto& spec : specs) {
    auto sm = load_serve_model(spec, a, several);
    if (!sm) return fail(sm.message());
    for (auto& other : models)
      if (other.name == sm->name) return fail("two models named '" + sm->name + "' (write --model NAME=PATH)");
    models.push_back(std::move(*sm));
  }
  const std::string subnet_policy = a.str("subnet-policy", "slackfit");
  if (auto p = find_subnet_policy(subnet_policy); !p) throw usage_error("--subnet-policy: " + p.message());
  const bool emulated_latency = a.choice("subnet-latency", {"measured", "emulated"}) == "emulated";
  ho.subnet_policy = subnet_policy;
  ho.variant_slots = int(a.integer("variant-slots", 0, 1 << 16));
  ho.emulated_latency = emulated_latency;
  // --subnet-catalogue FILE for one model, NAME=FILE,... for several.
  std::map<std::string, std::string> catalogue_files;
  for (auto& item : a.has("subnet-catalogue") ? split_list(a.str("subnet-catalogue")) : std::vector<std::string>{}) {
    auto eq = item.find('=');
    std::string name = eq == std::string::npos ? models[0].name : item.substr(0, eq);
    if (eq == std::string::npos && several) throw usage_error("--subnet-catalogue: with several models write NAME=FILE");
    if (std::none_of(models.begin(), models.end(), [&](auto& m) { return m.name == name; }))
      throw usage_error("--subnet-catalogue: no model named '" + name + "'");
    catalogue_files[name] = eq == std::string::npos ? item : item.substr(eq + 1);
  }
  for (auto& sm : models) {
    auto c = load_catalogue(sm, catalogue_files[sm.name]);
    if (!c) return fail("--subnet-catalogue: " + c.message());
    sm.catalogue = *c;
  }
  // Each model's options: the command's with its --model-knobs on top.
  std::vector<std::string> names;
  for (auto& sm : models) names.push_back(sm.name);
  auto margs = per_model_args(a, names);
  std::map<std::string, model_serving> knobs_of;
  for (auto& sm : models) {
    auto m = model_serving_from(margs.at(sm.name), sm.name, on_cluster);
    if (several && m.policy.empty())
      throw usage_error("several models need --policy, or a policy for each in --model-knobs (each autoscales; a "
                        "fixed pipeline serves one model)");
    if (!m.policy.empty()) {
      auto made = make_policy(m.policy, m.setup.knobs, m.setup.links);
      if (!made) return fail((several ? "model " + sm.name + ": " : std::string()) + made.message());
      if (on_cluster && (*made)->loading().local_copy)
        return fail("policy " + m.policy + " loads from a host copy on every node, which serving over a cluster does not "
                    "set up yet; use blitz, lambda-pipe or stop-the-world");
    }
    knobs_of.emplace(sm.name, std::move(m));
  }
  auto shards = parse_shards(a.str("shards"), models[0].m->config.n_layers);
  if (!shards) return fail(shards.message());
  // Signals go to the waiting main thread only: every other thread starts with them blocked.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  // The actor system: this process's own, or the one joined to the cluster (declared before the
  // guard, so the guard stops the actors first).
  std::unique_ptr<actor_runtime> rt;
  std::unique_ptr<local_cluster> cluster;
  std::optional<scaling_cluster> sc;
  caf::actor_system* sys = nullptr;
  if (on_cluster) {
    for (auto& sm : models) cs.models.push_back({sm.name, sm.path});
    auto started = start_scaling_cluster(cs, [](const std::string& line) { say("%s\n", line.c_str()); });
    if (!started) {
      // An attached cluster that failed its checks is left running (see start_scaling_cluster):
      // exit without tearing its threads down.
      fail(started.message());
      std::fflush(nullptr);
      std::_Exit(1);
    }
    sc = std::move(*started);
    cluster = std::move(sc->cluster);
    for (auto& [name, m] : knobs_of) m.setup.ro = cluster_router_options(m.setup.ro);
    sys = &cluster->system();
  } else {
    rt = std::make_unique<actor_runtime>();
    sys = rt->sys.get();
  }
  stop_guard guard;
  // Per model: a fixed pipeline, or instances a scaler starts and stops under its policy (in this
  // process, parameters arriving after the emulated link time, or on the cluster's nodes,
  // parameters multicast from a holder; /ready is 503 until the first serves, unless --min 0).
  std::vector<served_model> served;
  std::vector<caf::actor> scalers, routers;
  pipeline pl;
  for (auto& sm : models) {
    caf::actor router, scaler;
    const auto& mk = knobs_of.at(sm.name);
    router_options ro = mk.setup.ro;
    ro.catalogue = sm.catalogue;
    ro.subnet_policy = subnet_policy;
    ro.emulated_latency = emulated_latency;
    if (!mk.policy.empty()) {
      auto dev = parse_devices(a.str("devices"), 1);  // one device for every instance
      if (!dev) return fail(dev.message());
      auto so = mk.setup.so;
      so.cuda_device = dev->front();
      if (sc) so.cluster = sc->placement_for(sm.name);
      so.log_label = sm.name;  // scaling events on stderr, for operators
      so.max_events = 1000;    // a server runs for days: its report keeps recent events, counts of all
      router = spawn_router(*sys, sm.m, std::vector<route_ptr>{}, ro);
      scaler = spawn_scaler(*sys, sm.m, router,
                            std::shared_ptr<scaling_policy>(std::move(*make_policy(mk.policy, mk.setup.knobs, mk.setup.links))),
                            mk.setup.knobs, so);
      guard.actors.push_back(scaler);
      guard.actors.push_back(router);
      scalers.push_back(scaler);
    } else {
      auto devs = parse_devices(a.str("devices"), shards->size());
      if (!devs) return fail(devs.message());
      auto p = spawn_pipeline(*sys, sm.m, *shards, *devs);
      if (!p) return fail(p.message());
      pl = *p;
      guard.pipelines.push_back(pl);
      router = spawn_router(*sys, sm.m, pl.path, ro);
      guard.actors.push_back(router);
      // A fixed pipeline must serve before the server says it does: one real generation through
      // it (a GPU without a driver, say, fails here with the reason instead of in every request).
      if (auto st = probe_generation(*sys, router, std::chrono::seconds(60)); !st)
        return fail("the model cannot serve a request: " + st.message());
    }
    routers.push_back(router);
    served.push_back({sm.name, router, sm.m, std::move(*sm.tok), scaler, mk.setup.knobs.min_instances == 0 && scaler,
                      sm.catalogue});
  }
  auto srv = http_server::start(*sys, std::move(served), ho);
  if (!srv) return fail(srv.message());
  for (auto& sm : models)
    std::printf("serving %s as '%s'\n", sm.path.c_str(), sm.name.c_str());
  std::printf("serving on http://%s:%d (POST /v1/completions, /v1/chat/completions; GET /v1/models, /health, /ready, "
              "/metrics)\n",
              ho.host.c_str(), (*srv)->port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&sigs, &sig);
  std::printf("%s: draining (up to %g s)\n", sig == SIGTERM ? "SIGTERM" : "SIGINT", drain_s);
  std::fflush(stdout);
  int left = (*srv)->drain(std::chrono::milliseconds(int64_t(drain_s * 1000)));
  (*srv)->stop();
  for (auto& s : scalers) caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  for (auto& r : routers) caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
  if (left > 0) {
    std::fprintf(stderr, "strata serve: %d request(s) still running after the drain timeout\n", left);
    return 1;
  }
  std::printf("drained; bye\n");
  std::fflush(stdout);
  return 0;
}

int run_autoscale(const args& a);

// Runs the strata command a topology file stands for (see dataflow/experiment/topology.hpp), first writing
// its random model, if it has one, to a temporary directory.
int cmd_run(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]).rfind("--", 0) == 0) return fail("run needs a topology FILE (see strata help)");
  auto t = load_topology(argv[2]);
  if (!t) return fail(t.message());
  const command_spec& spec = strata_command(t->run);
  auto from_file = args::from_values(spec, t->options, t->flags);
  if (!from_file) return fail(t->source + ": " + from_file.message());
  std::string tmp;
  if (!t->random_model.empty()) {
    char pattern[] = "/tmp/strata-topology-XXXXXX";
    if (!mkdtemp(pattern)) return fail("cannot create a temporary directory for the random model");
    tmp = pattern;
    auto gen = args::from_values(strata_command("gen-model"), t->random_model);
    if (!gen) return fail(t->source + ": [model.random]: " + gen.message());
    gen->set("out", tmp + "/model");
    gen->set("dtype", "f32");
    if (int rc = run_gen_model(*gen); rc != 0) return rc;
    from_file->set("model", tmp + "/model");
  }
  auto a = args::parse(argc, argv, 3, spec, &*from_file);  // the command line overrides the file
  if (!a) return fail(a.message());
  quiet_logs = a->has("quiet");
  say("topology %s: strata %s%s\n", argv[2], t->run.c_str(), a->line().c_str());
  current_command = t->run;
  int rc = 1;
  try {
    rc = t->run == "autoscale" ? run_autoscale(*a) : t->run == "replay" ? run_replay(*a) : run_serve(*a);
  } catch (const usage_error& e) {
    if (!tmp.empty()) fs::remove_all(tmp);
    // A bad value from the file is named by its key there, not by the option it became (unless
    // the command line set that option too).
    std::string msg = e.what();
    auto colon = msg.find(':');
    std::string opt = msg.rfind("--", 0) == 0 && colon != std::string::npos ? msg.substr(2, colon - 2) : "";
    auto line = args::parse(argc, argv, 3, spec);
    bool on_line = line && line->has(opt);
    for (auto& [o, where] : t->origins)
      if (!opt.empty() && o == opt && !on_line) return fail(t->source + ": " + where + msg.substr(colon));
    throw;
  }
  if (!tmp.empty()) fs::remove_all(tmp);
  return rc;
}

// The policies side by side. A column that does not apply (no stop-the-world run to compare
// with, no scale-out to time) prints "-", never a 0 that reads as a measurement.
void print_policy_table(const std::vector<policy_run>& rows) {
  const policy_run* base = nullptr;
  for (auto& r : rows)
    if (r.policy == "stop-the-world") base = &r;
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / double(v.size());
  };
  std::printf("%-15s %9s %9s %9s %9s %7s %8s %8s %9s %11s %11s %9s %8s\n", "policy", "p50 TTFT", "p99 TTFT",
              "p99 TBT", "p99 E2E", "SLO %", "inst*s", "dev*s", "p99 TTFT", "to serving", "to full", "migrated", "with KV");
  std::printf("%-15s %9s %9s %9s %9s %7s %8s %8s %9s %11s %11s %9s %8s\n", "", "ms", "ms", "ms", "ms", "", "", "", "vs STW", "s",
              "s", "requests", "MB");
  auto cell = [](bool applies, double v, const char* fmt) {
    char b[32];
    if (!applies) return std::string("-");
    std::snprintf(b, sizeof b, fmt, v);
    return std::string(b);
  };
  for (auto& r : rows) {
    bool vs = base && base->summary.ttft.p99 > 0;
    std::printf("%-15s %9.1f %9.1f %9.1f %9.1f %7.1f %8.1f %8.1f %9s %11s %11s %9llu %8.2f\n", r.policy.c_str(),
                r.summary.ttft.p50 * 1e3, r.summary.ttft.p99 * 1e3, r.summary.tbt.p99 * 1e3, r.summary.e2e.p99 * 1e3,
                100 * r.summary.slo_attainment, r.report.instance_seconds, r.report.device_seconds,
                cell(vs, vs ? r.summary.ttft.p99 / base->summary.ttft.p99 : 0, "%.2f").c_str(),
                cell(!r.report.to_first_layer_s.empty(), mean(r.report.to_first_layer_s), "%.3f").c_str(),
                cell(!r.report.to_full_s.empty(), mean(r.report.to_full_s), "%.3f").c_str(),
                (unsigned long long)r.report.migrations, double(r.report.kv_bytes_moved) / 1e6);
  }
}

int run_autoscale(const args& a) {
  if (!a.has("model") || !a.has("trace")) return fail("autoscale needs --model PATH and --trace FILE|gamma");
  apply_common(a);
  if (a.has("threads")) ::setenv("STRATA_THREADS", a.str("threads").c_str(), 1);  // for node processes
  // The options become a spec (every value checked before anything starts) ...
  autoscale_spec spec;
  spec.model_path = a.str("model");
  spec.cluster = nodes_from_args(a);
  spec.policies = split_list(a.str("policies"));
  const int kill_sig = a.choice("kill-signal", {"KILL", "STOP"}) == "KILL" ? SIGKILL : SIGSTOP;
  if (a.has("kill")) {
    auto text = a.str("kill");
    auto at = text.find('@');
    if (at == std::string::npos || at == 0) return fail("--kill: expected NODE@SECONDS, got '" + text + "'");
    auto when = text.substr(at + 1);
    char* end = nullptr;
    double kill_at = std::strtod(when.c_str(), &end);
    if (when.empty() || *end != '\0' || !(kill_at >= 0 && kill_at <= 86400))
      return fail("--kill: expected seconds in [0, 86400] after '@', got '" + when + "'");
    spec.fault = node_fault{text.substr(0, at), kill_at, kill_sig};
    if (spec.cluster.nodes == 0) return fail("--kill needs --nodes (it kills a node process)");
  }
  auto m = load_model(spec.model_path);
  if (!m) return fail(m.message());
  spec.model = *m;
  auto shaped = trace_from_args(a, (*m)->config.seq_len);
  if (!shaped) return fail(shaped.message());
  spec.requests = std::move(*shaped);
  auto setup = scaling_from_args(a);
  if (!setup) return fail(setup.message());
  spec.setup = *setup;
  spec.replay = printing_replay(**m, a, spec.requests.requests.size(), 5);
  // ... the runner replays it under each policy, and this prints what it returns.
  autoscale_hooks hooks;
  hooks.log = [](const std::string& s) { say("%s\n", s.c_str()); };
  hooks.starting = [](const policy_run& r) {
    std::printf("== %s: new instances load from %s%s\n", r.policy.c_str(), r.loads_from.c_str(),
                r.live ? ", serving while they load" : ", serving once complete");
    std::fflush(stdout);
  };
  hooks.finished = [&](const policy_run& r) -> status {
    std::printf("%s", r.summary.table(r.policy).c_str());
    if (spec.fault) {
      // Recovery: the longest a request running at the signal waited from it for its next token.
      double ka = r.fault_at_s, recovered = 0;
      size_t in_flight = 0;
      for (auto& q : r.records) {
        if (ka < 0 || q.arrival > ka || (q.done >= 0 && q.done <= ka)) continue;
        ++in_flight;
        auto next = std::upper_bound(q.token_times.begin(), q.token_times.end(), ka);
        if (next != q.token_times.end()) recovered = std::max(recovered, *next - ka);
      }
      if (ka < 0)
        std::printf("  fault: %s was not signalled (the replay ended first)\n", spec.fault->node.c_str());
      else
        std::printf("  fault: SIG%s to %s at %.2f s; %llu request(s) re-admitted; requests in flight then: %zu, %s\n",
                    kill_sig == SIGKILL ? "KILL" : "STOP", spec.fault->node.c_str(), ka,
                    (unsigned long long)r.router.readmissions, in_flight,
                    recovered > 0 ? ("the longest wait of one of them for its next token " +
                                     std::to_string(int64_t(recovered * 1000 + 0.5)) + " ms").c_str()
                    : in_flight > 0 ? "none of them got another token"
                                    : "none to recover");
    }
    for (auto& e : r.report.events)
      if (e.instance == 0)  // an event of the cluster, not of one instance
        std::printf("    %7.2f s  %s: %s\n", e.t, e.what.c_str(), e.detail.c_str());
      else
        std::printf("    %7.2f s  %-9s instance %u %s\n", e.t, e.what.c_str(), e.instance, e.detail.c_str());
    if (a.has("svg-prefix")) {
      step_series inst{"instances", r.report.instances};
      auto path = a.str("svg-prefix") + r.policy + ".svg";
      if (auto st = write_timeline_svg(path, "policy " + r.policy, r.records, {inst}); !st) return st;
      std::printf("  timeline: %s\n", path.c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
    return {};
  };
  auto result = run_autoscale_experiment(spec, hooks);
  if (!result) return fail(result.message());
  print_policy_table(result->runs);
  if (a.has("json")) {
    if (auto st = write_file(a.str("json"), results_json(*result), "JSON results"); !st) return fail(st.message());
    std::printf("results written to %s\n", a.str("json").c_str());
  }
  // A run that lost requests says so in its exit status, with the first reason.
  for (auto& r : result->runs)
    for (auto& q : r.records)
      if (!q.ok)
        return fail(r.policy + ": " + std::to_string(r.summary.failed) + " of " + std::to_string(r.summary.requests) +
                    " requests failed; the first: " + q.error);
  return 0;
}

// A command that runs from its parsed options (strata run builds the same args from a file).
int parsed(int argc, char** argv, const char* name, int (*run)(const args&)) {
  auto a = args::parse(argc, argv, 2, strata_command(name));
  if (!a) return fail(a.message());
  quiet_logs = a->has("quiet");
  return run(*a);
}

int cmd_policies() {
  std::printf("scaling policies (--policy, --policies):\n");
  for (auto& p : scaling_policies()) std::printf("  %-16s %s\n", p.name.c_str(), p.description.c_str());
  std::printf("route schedulers (--scheduler):\n");
  for (auto& r : route_schedulers()) std::printf("  %-16s %s\n", r.name.c_str(), r.description.c_str());
  std::printf("subnet policies (serve --subnet-policy; also fixed:SPEC):\n");
  for (auto& p : subnet_policies()) std::printf("  %-16s %s\n", p.name.c_str(), p.description.c_str());
  std::printf("batch schedulers (--batch-scheduler):\n");
  for (auto& b : batch_schedulers()) std::printf("  %-16s %s\n", b.name.c_str(), b.description.c_str());
  std::printf("multicast plans (cluster multicast --plan):\n");
  for (auto& p : plan_shapes()) std::printf("  %-18s %s\n", p.name.c_str(), p.description.c_str());
  return 0;
}

// The command a help request or a usage error is about: "generate", "cluster multicast", ...
std::string command_of(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "help";
  if (cmd == "cluster" && argc > 2 && argv[2][0] != '-') cmd += " " + std::string(argv[2]);
  return cmd;
}

bool known_command(const std::string& name) {
  for (auto& c : strata_commands())
    if (c.name == name) return true;
  return false;
}

int dispatch(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "help";
  current_command = command_of(argc, argv);
  bool help = cmd == "help" || cmd == "--help" || cmd == "-h";
  for (int i = 2; i < argc; ++i) help |= std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h";
  if (help) {
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
      if (argc > 2 && std::string(argv[2]) == "--markdown") return std::fputs(markdown_reference().c_str(), stdout), 0;
      if (argc > 2 && known_command(argv[2])) return std::fputs(command_help(strata_command(argv[2])).c_str(), stdout), 0;
      if (argc > 2) return fail("help: unknown command '" + std::string(argv[2]) + "' (see strata help)");
      return std::fputs(overview_help().c_str(), stdout), 0;
    }
    if (known_command(current_command)) return std::fputs(command_help(strata_command(current_command)).c_str(), stdout), 0;
    if (cmd == "cluster") {
      for (const char* sub : {"cluster view", "cluster multicast", "cluster drain", "cluster init-certs"})
        std::printf("%s\n", command_help(strata_command(sub)).c_str());
      return 0;
    }
    return fail("unknown command '" + cmd + "' (see strata help)");
  }
  // A bad STRATA_ISA fails every command up front rather than running at another level; so does
  // a bad STRATA_WEIGHTS (which nodes, which have no --weights, honour too).
  if (auto st = check_isa_env(); !st) return fail(st.message());
  if (const char* w = std::getenv("STRATA_WEIGHTS"); w && *w) {
    auto t = parse_dtype(w);
    if (!t) return fail(std::string("STRATA_WEIGHTS: ") + t.message());
    set_default_load_options({true, *t});
  }
  if (cmd == "generate") return cmd_generate(argc, argv, false);
  if (cmd == "demo") return cmd_generate(argc, argv, true);
  if (cmd == "inspect") return cmd_inspect(argc, argv);
  if (cmd == "subnets") return parsed(argc, argv, "subnets", run_subnets);
  if (cmd == "gen-model") return parsed(argc, argv, "gen-model", run_gen_model);
  if (cmd == "convert") return cmd_convert(argc, argv);
  if (cmd == "node") return cmd_node(argc, argv);
  if (cmd == "replay") return parsed(argc, argv, "replay", run_replay);
  if (cmd == "autoscale") return parsed(argc, argv, "autoscale", run_autoscale);
  if (cmd == "serve") return parsed(argc, argv, "serve", run_serve);
  if (cmd == "bench-serve") return parsed(argc, argv, "bench-serve", run_bench_serve_cmd);
  if (cmd == "run") return cmd_run(argc, argv);
  if (cmd == "cluster") return cmd_cluster(argc, argv);
  if (cmd == "policies") return argc > 2 ? fail("policies takes no options") : cmd_policies();
  std::vector<std::string> names;
  for (auto& c : strata_commands())
    if (c.name.find(' ') == std::string::npos) names.push_back(c.name);
  auto near = nearest_name(names, cmd);
  return fail("unknown command '" + cmd + "'" + (near.empty() ? "" : " (did you mean " + near + "?)") + " (see strata help)");
}

}  // namespace

// Bad input ends in one line on stderr and exit status 1, whatever throws: never an abort.
int main(int argc, char** argv) {
  try {
    return dispatch(argc, argv);
  } catch (const usage_error& e) {
    return fail(std::string(e.what()) + " (see strata " + current_command + " --help)");
  } catch (const std::bad_alloc&) {
    return fail("out of memory (a smaller model, or --max-memory to be told before loading)");
  } catch (const std::exception& e) {
    return fail(std::string("internal error: ") + e.what());
  }
}
