// GPU kernels and layer shards against the CPU backend. Without a CUDA device this program says
// why and exits 77, which ctest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "cuda/device.hpp"
#include "cuda/head.hpp"
#include "cuda/shard.hpp"
#ifdef STRATA_HAVE_NCCL
#include <cuda_runtime.h>

#include "cuda/nccl_chain.hpp"
#endif
#include "dataflow/compute/forward.hpp"
#include "dataflow/compute/kernels.hpp"
#include "tests/test_util.hpp"

using namespace strata;

namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

bool write_bytes(const std::string& path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), std::streamsize(n));
  return bool(f);
}

// Largest |a - b| relative to the largest |b|: how far the GPU's logits are from the CPU's.
double max_rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-12;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return worst / scale;
}

// A batch: seq 1 prefills `prompt` rows while seq 2 (already holding `prompt` positions) decodes.
struct batch {
  std::vector<seq_id> seqs;
  std::vector<int> pos, tokens;
};

batch prefill(const std::vector<seq_id>& ids, int rows_each, int vocab) {
  batch b;
  for (auto s : ids)
    for (int p = 0; p < rows_each; ++p) {
      b.seqs.push_back(s);
      b.pos.push_back(p);
      b.tokens.push_back(int((s * 31 + uint64_t(p) * 7) % uint64_t(vocab)));
    }
  return b;
}

// Runs `steps` batches through all layers on the CPU and through a GPU shard for layers
// [split, L) (CPU below: a mixed route), returning the worst logits error over all steps.
double compare(const model& m, cuda::weight_type type, int split, int steps) {
  const auto& c = m.config;
  const int L = c.n_layers;
  kv_cache cpu_kv(c, 0, L), mixed_kv(c, 0, L);
  cuda::shard_options o;
  o.type = type;
  o.max_sequences = 4;
  auto g = cuda::gpu_shard::create(c, split, L, o);
  REQUIRE_MESSAGE(g, g.message());
  for (int l = split; l < L; ++l) REQUIRE((*g)->load_layer(l, *m.layers[size_t(l)]));
  REQUIRE((*g)->wait_loaded());
  double worst = 0;
  std::vector<int> len = {0, 0, 0};
  for (int step = 0; step < steps; ++step) {
    batch b = step == 0 ? prefill({1, 2}, 6, c.vocab_size) : batch{};
    if (step > 0)
      for (seq_id s : {seq_id(1), seq_id(2)}) {
        b.seqs.push_back(s);
        b.pos.push_back(len[s]);
        b.tokens.push_back(int((s * 13 + uint64_t(step) * 5) % uint64_t(c.vocab_size)));
      }
    int rows = int(b.seqs.size());
    std::vector<float> x(size_t(rows) * size_t(c.dim)), y;
    embed(m, b.tokens.data(), rows, x.data());
    y = x;
    for (int l = 0; l < L; ++l) REQUIRE(forward_layer(c, *m.layers[size_t(l)], l, cpu_kv, b.seqs.data(), b.pos.data(), rows, x.data()));
    for (int l = 0; l < split; ++l)
      REQUIRE(forward_layer(c, *m.layers[size_t(l)], l, mixed_kv, b.seqs.data(), b.pos.data(), rows, y.data()));
    auto st = (*g)->forward(split, L, b.seqs.data(), b.pos.data(), rows, y.data());
    REQUIRE_MESSAGE(st, st.message());
    std::vector<float> lc(size_t(rows) * size_t(c.vocab_size)), lg(lc.size());
    final_logits(m, x.data(), rows, lc.data());
    final_logits(m, y.data(), rows, lg.data());
    worst = std::max(worst, max_rel_error(lg, lc));
    for (int r = 0; r < rows; ++r) len[b.seqs[size_t(r)]] = b.pos[size_t(r)] + 1;
  }
  CHECK((*g)->length(1) == len[1]);
  return worst;
}

}  // namespace

TEST_CASE("rmsnorm on the GPU matches the CPU kernel") {
  auto rng = strata::test::seeded_rng();
  INFO("STRATA_TEST_SEED=" << strata::test::test_seed());
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  int rows = 37, n = 1000;
  std::vector<float> x(static_cast<size_t>(rows * n)), w(static_cast<size_t>(n)), cpu(x.size()), gpu(x.size());
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  strata::rmsnorm(cpu.data(), x.data(), w.data(), rows, n, 1e-5f);
  auto st = strata::cuda::rmsnorm_host(gpu.data(), x.data(), w.data(), rows, n, 1e-5f);
  REQUIRE_MESSAGE(st, st.message());
  double worst = 0;
  for (size_t i = 0; i < cpu.size(); ++i) worst = std::max(worst, double(std::abs(cpu[i] - gpu[i])));
  CHECK(worst < 1e-4);
}

TEST_CASE("GPU layers match the CPU backend: random model and stories260K, bf16 and fp16, mixed routes") {
  for (auto rope : {rope_style::rotate_half, rope_style::interleaved}) {
    auto c = model_config::llama(256, 688, 4, 8, 2, 512, 256);
    c.rope = rope;
    auto m = make_random_model(c, 11);
    double bf = compare(*m, cuda::weight_type::bf16, 0, 6);
    double hf = compare(*m, cuda::weight_type::fp16, 0, 6);
    double mixed = compare(*m, cuda::weight_type::bf16, 2, 6);
    std::printf("random model (%s): max relative logits error bf16 %.2e, fp16 %.2e, CPU+GPU route %.2e\n",
                rope == rope_style::interleaved ? "interleaved" : "rotate_half", bf, hf, mixed);
    CHECK(bf < 3e-2);
    CHECK(hf < 5e-3);
    CHECK(mixed < 3e-2);
  }
  auto s = test::stories();
  double bf = compare(*s, cuda::weight_type::bf16, 0, 8);
  double mixed = compare(*s, cuda::weight_type::fp16, 3, 8);
  std::printf("stories260K: max relative logits error bf16 %.2e, fp16 CPU+GPU route %.2e\n", bf, mixed);
  CHECK(bf < 3e-2);
  CHECK(mixed < 5e-3);
}

TEST_CASE("the GPU head's logits and tokens match the CPU tail: greedy, temperature, top-p") {
  auto check = [](const model& m, const char* name) {
    const auto& c = m.config;
    const int rows = 300;  // more than max_rows: two device passes
    std::mt19937 gen(17);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> x(size_t(rows) * size_t(c.dim));
    for (auto& v : x) v = d(gen);
    std::vector<float> cpu(size_t(rows) * size_t(c.vocab_size));
    final_logits(m, x.data(), rows, cpu.data());
    auto h = cuda::gpu_head::create(m, {});
    REQUIRE_MESSAGE(h, h.message());
    for (auto [temp, top_p] : {std::pair{0.0f, 1.0f}, {0.8f, 1.0f}, {1.0f, 0.9f}, {0.7f, 0.5f}}) {
      std::vector<sampling_params> p(size_t(rows), sampling_params{temp, top_p, 0});
      std::vector<uint64_t> rng_gpu(static_cast<size_t>(rows)), rng_cpu;
      for (int r = 0; r < rows; ++r) rng_gpu[size_t(r)] = initial_rng_state(uint64_t(r) + 1);
      rng_cpu = rng_gpu;
      std::vector<int32_t> tokens(size_t(rows), -1);
      std::vector<float> logits(cpu.size());
      auto st = (*h)->sample(x.data(), rows, p.data(), rng_gpu.data(), tokens.data(), logits.data());
      REQUIRE_MESSAGE(st, st.message());
      double err = max_rel_error(logits, cpu);
      // The CPU sampler on the GPU's own logits: the same token for the same coin, up to ties
      // and float summation order.
      int same = 0;
      for (int r = 0; r < rows; ++r) {
        std::vector<float> row(logits.begin() + long(r) * c.vocab_size, logits.begin() + long(r + 1) * c.vocab_size);
        same += sample(row.data(), c.vocab_size, p[size_t(r)], rng_cpu[size_t(r)]) == tokens[size_t(r)];
      }
      std::printf("%s head, temperature %.1f top_p %.1f: logits error %.2e, %d/%d tokens as the CPU sampler\n", name,
                  double(temp), double(top_p), err, same, rows);
      CHECK(err < 3e-2);
      CHECK(same >= rows * 99 / 100);
      CHECK(rng_gpu == rng_cpu);  // one random stream, wherever the tail runs
    }
  };
  check(*make_random_model(model_config::llama(256, 688, 2, 8, 2, 512, 128), 21), "random model");
  check(*test::stories(), "stories260K");
}

// The CPU tail's rows are batch-invariant bit for bit (tests/unit); cuBLAS picks its GEMM by the
// row count, so the GPU's may not be. Measured and printed the first time a GPU runs this; may
// fail until the GPU path gets batch-invariant GEMMs (see README, Determinism).
TEST_CASE("the GPU head's logits of a row, alone and in batches of 7 and 300" * doctest::may_fail()) {
  const model& m = *test::stories();
  const auto& c = m.config;
  const int rows = 300;
  std::mt19937 gen(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(size_t(rows) * size_t(c.dim));
  for (auto& v : x) v = d(gen);
  auto h = cuda::gpu_head::create(m, {});
  REQUIRE_MESSAGE(h, h.message());
  auto logits_of = [&](int first, int n) {
    std::vector<sampling_params> p(static_cast<size_t>(n));
    std::vector<uint64_t> rng(size_t(n), 1);
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    std::vector<float> l(size_t(n) * size_t(c.vocab_size));
    auto st = (*h)->sample(x.data() + size_t(first) * size_t(c.dim), n, p.data(), rng.data(), tokens.data(), l.data());
    REQUIRE_MESSAGE(st, st.message());
    return l;
  };
  auto all = logits_of(0, rows);
  int differ7 = 0, differ1 = 0;
  const size_t V = size_t(c.vocab_size);
  for (int r = 0; r + 7 <= rows; r += 37) {
    auto seven = logits_of(r, 7), one = logits_of(r, 1);
    differ7 += std::memcmp(seven.data(), all.data() + size_t(r) * V, V * 4) != 0;
    differ1 += std::memcmp(one.data(), all.data() + size_t(r) * V, V * 4) != 0;
  }
  std::printf("GPU head: of 9 rows, %d differ in batches of 7 and %d alone from their bits in a batch of 300\n",
              differ7, differ1);
  CHECK(differ7 == 0);
  CHECK(differ1 == 0);
}

TEST_CASE("a sequence's KV cache moves between GPU and CPU shards and decoding goes on as before") {
  auto c = model_config::llama(256, 688, 3, 8, 2, 512, 128);
  auto m = make_random_model(c, 23);
  const int L = c.n_layers, prompt = 6, decode = 3;
  batch pre = prefill({1}, prompt, c.vocab_size);
  // Runs `decode` single-token steps of sequence 1 from position `prompt` on `step`, returning the
  // logits of every step.
  auto decode_on = [&](auto step) {
    std::vector<float> out;
    for (int i = 0; i < decode; ++i) {
      seq_id s = 1;
      int p = prompt + i, tok = (17 * i + 3) % c.vocab_size;
      std::vector<float> x(size_t(c.dim)), lg(size_t(c.vocab_size));
      embed(*m, &tok, 1, x.data());
      step(&s, &p, x.data());
      final_logits(*m, x.data(), 1, lg.data());
      out.insert(out.end(), lg.begin(), lg.end());
    }
    return out;
  };
  auto cpu_prefill = [&](kv_cache& kv) {
    std::vector<float> x(size_t(prompt) * size_t(c.dim));
    embed(*m, pre.tokens.data(), prompt, x.data());
    for (int l = 0; l < L; ++l)
      REQUIRE(forward_layer(c, *m->layers[size_t(l)], l, kv, pre.seqs.data(), pre.pos.data(), prompt, x.data()));
  };
  auto cpu_step = [&](kv_cache& kv) {
    return [&](seq_id* s, int* p, float* x) {
      for (int l = 0; l < L; ++l) REQUIRE(forward_layer(c, *m->layers[size_t(l)], l, kv, s, p, 1, x));
    };
  };
  auto gpu_shard_loaded = [&]() {
    auto g = cuda::gpu_shard::create(c, 0, L, {});
    REQUIRE_MESSAGE(g, g.message());
    for (int l = 0; l < L; ++l) REQUIRE((*g)->load_layer(l, *m->layers[size_t(l)]));
    return std::move(*g);
  };
  kv_cache ref_kv(c, 0, L);
  cpu_prefill(ref_kv);
  auto ref = decode_on(cpu_step(ref_kv));
  // GPU prefill, then the cache to a CPU shard, which decodes.
  auto g = gpu_shard_loaded();
  std::vector<float> x(size_t(prompt) * size_t(c.dim));
  embed(*m, pre.tokens.data(), prompt, x.data());
  REQUIRE(g->forward(0, L, pre.seqs.data(), pre.pos.data(), prompt, x.data()));
  auto out = g->export_seq(1, 0, L);
  REQUIRE_MESSAGE(out, out.message());
  CHECK(out->length == prompt);
  kv_cache cpu_kv(c, 0, L);
  REQUIRE(cpu_kv.import_seq(*out));
  double to_cpu = max_rel_error(decode_on(cpu_step(cpu_kv)), ref);
  // CPU prefill, then the cache to a fresh GPU shard, which decodes.
  kv_cache src(c, 0, L);
  cpu_prefill(src);
  auto in = src.export_seq(1, 0, L);
  REQUIRE(in);
  auto g2 = gpu_shard_loaded();
  REQUIRE(g2->import_seq(*in));
  CHECK(g2->length(1) == prompt);
  double to_gpu = max_rel_error(decode_on([&](seq_id* s, int* p, float* x) { REQUIRE(g2->forward(0, L, s, p, 1, x)); }), ref);
  std::printf("KV migration: GPU->CPU decode logits error %.2e, CPU->GPU %.2e\n", to_cpu, to_gpu);
  CHECK(to_cpu < 3e-2);
  CHECK(to_gpu < 3e-2);
  in->kv_dim += 1;  // a slice of another model
  auto bad = g2->import_seq(*in);
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("malformed KV slice") != std::string::npos);
  CHECK_FALSE(g2->export_seq(99, 0, L));
}

TEST_CASE("a GPU shard refuses what it cannot run, with the reason, and keeps working") {
  auto c = model_config::llama(128, 344, 2, 4, 2, 300, 64);
  auto m = make_random_model(c, 3);
  cuda::shard_options o;
  o.max_sequences = 1;
  auto g = cuda::gpu_shard::create(c, 0, 2, o);
  REQUIRE_MESSAGE(g, g.message());
  std::vector<float> x(size_t(c.dim), 0.5f);
  seq_id s1 = 1, s2 = 2;
  int p0 = 0, p5 = 5;
  auto st = (*g)->forward(0, 2, &s1, &p0, 1, x.data());
  REQUIRE_FALSE(st);
  CHECK(st.message().find("never loaded") != std::string::npos);
  REQUIRE((*g)->load_layer(0, *m->layers[0]));
  REQUIRE((*g)->load_layer(1, *m->layers[1]));
  CHECK_FALSE((*g)->load_layer(1, *m->layers[1]));
  CHECK_FALSE((*g)->load_layer(2, *m->layers[1]));
  REQUIRE((*g)->wait_loaded());
  CHECK((*g)->ready(1));
  st = (*g)->forward(0, 2, &s1, &p5, 1, x.data());
  REQUIRE_FALSE(st);
  CHECK(st.message().find("does not continue") != std::string::npos);
  REQUIRE((*g)->forward(0, 2, &s1, &p0, 1, x.data()));
  st = (*g)->forward(0, 2, &s2, &p0, 1, x.data());
  REQUIRE_FALSE(st);
  CHECK(st.message().find("KV slots are in use") != std::string::npos);
  (*g)->release(s1);
  CHECK((*g)->forward(0, 2, &s2, &p0, 1, x.data()));
  CHECK((*g)->stats().layers_ready == 2);
  cuda::shard_options tiny;
  tiny.pool_bytes = 1024;
  auto small = cuda::gpu_shard::create(c, 0, 2, tiny);
  REQUIRE_FALSE(small);
  CHECK(small.message().find("the shard needs") != std::string::npos);
}

TEST_CASE("a GPU shard resized to a share of the SMs (green context) computes the same") {
  auto c = model_config::llama(256, 688, 2, 8, 2, 512, 128);
  auto m = make_random_model(c, 5);
  auto run = [&](int sms, int& got) {
    cuda::shard_options o;
    o.sm_count = sms;
    auto g = cuda::gpu_shard::create(c, 0, 2, o);
    REQUIRE_MESSAGE(g, g.message());
    for (int l = 0; l < 2; ++l) REQUIRE((*g)->load_layer(l, *m->layers[size_t(l)]));
    batch b = prefill({7}, 16, c.vocab_size);
    std::vector<float> x(size_t(16) * size_t(c.dim));
    embed(*m, b.tokens.data(), 16, x.data());
    auto st = (*g)->forward(0, 2, b.seqs.data(), b.pos.data(), 16, x.data());
    REQUIRE_MESSAGE(st, st.message());
    got = (*g)->stats().sm_count;
    REQUIRE((*g)->set_sm_count(0));  // resized back to the whole GPU at run time
    seq_id s = 7;
    int p = 16;
    std::vector<float> one(x.end() - c.dim, x.end());
    REQUIRE((*g)->forward(0, 2, &s, &p, 1, one.data()));
    CHECK((*g)->stats().sm_count >= got);
    return x;
  };
  int whole = 0, part = 0;
  auto a = run(0, whole);
  auto b = run(16, part);
  MESSAGE("whole GPU " << whole << " SMs, partition " << part << " SMs");
  CHECK(part >= 16);
  CHECK(part < whole);
  CHECK(max_rel_error(b, a) < 1e-3);
}

namespace {

// The model and batch both sides of the IPC test compute on (same seed: same weights).
model_config ipc_config() { return model_config::llama(256, 688, 3, 8, 2, 512, 128); }

std::vector<float> ipc_forward(cuda::gpu_shard& g, const model& m) {
  batch b = prefill({3}, 8, m.config.vocab_size);
  std::vector<float> x(size_t(8) * size_t(m.config.dim));
  embed(m, b.tokens.data(), 8, x.data());
  auto st = g.forward(0, m.config.n_layers, b.seqs.data(), b.pos.data(), 8, x.data());
  if (!st) std::fprintf(stderr, "forward: %s\n", st.message().c_str());
  return x;
}

// The importing process: loads every layer from the exporter's device memory, runs the batch and
// writes its activations to `out`.
int ipc_child(const char* in, const char* out) {
  auto peer = cuda::ipc_layers::from_bytes(read_bytes(in));
  if (!peer) return std::fprintf(stderr, "%s\n", peer.message().c_str()), 1;
  auto m = make_random_model(ipc_config(), 9);
  auto g = cuda::gpu_shard::create(m->config, 0, m->config.n_layers);
  if (!g) return std::fprintf(stderr, "%s\n", g.message().c_str()), 1;
  for (int l = 0; l < m->config.n_layers; ++l)
    if (auto st = (*g)->load_layer_from_peer(l, *peer); !st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  if (auto st = (*g)->wait_loaded(); !st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  auto x = ipc_forward(**g, *m);
  return write_bytes(out, x.data(), x.size() * sizeof(float)) ? 0 : 1;
}

}  // namespace

TEST_CASE("another process on the GPU loads a shard's layers device-to-device through CUDA IPC") {
  auto m = make_random_model(ipc_config(), 9);
  auto g = cuda::gpu_shard::create(m->config, 0, m->config.n_layers);
  REQUIRE_MESSAGE(g, g.message());
  for (int l = 0; l < m->config.n_layers; ++l) REQUIRE((*g)->load_layer(l, *m->layers[size_t(l)]));
  REQUIRE((*g)->wait_loaded());
  auto mine = ipc_forward(**g, *m);
  auto exported = (*g)->export_layers();
  REQUIRE_MESSAGE(exported, exported.message());
  auto back = cuda::ipc_layers::from_bytes(exported->to_bytes());
  REQUIRE(back);
  CHECK(back->offsets == exported->offsets);
  CHECK_FALSE(cuda::ipc_layers::from_bytes({1, 2, 3}));
  std::string dir = "/tmp/strata-ipc-" + std::to_string(::getpid());
  std::string in = dir + ".export", out = dir + ".x";
  auto bytes = exported->to_bytes();
  REQUIRE(write_bytes(in, bytes.data(), bytes.size()));
  char self_exe[] = "/proc/self/exe", flag[] = "--ipc-child";
  std::vector<char*> args{self_exe, flag, in.data(), out.data(), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, args.data(), environ) == 0);
  int wstatus = 0;
  REQUIRE(waitpid(pid, &wstatus, 0) == pid);
  REQUIRE(WIFEXITED(wstatus));
  CHECK(WEXITSTATUS(wstatus) == 0);
  std::ifstream f(out, std::ios::binary);
  std::vector<float> theirs(mine.size());
  f.read(reinterpret_cast<char*>(theirs.data()), std::streamsize(theirs.size() * sizeof(float)));
  REQUIRE(f);
  CHECK(max_rel_error(theirs, mine) < 1e-6);  // the same bf16 bytes and kernels
  std::remove(in.c_str());
  std::remove(out.c_str());
}

#ifdef STRATA_HAVE_NCCL
namespace {

// One rank of the NCCL chain test: joins, broadcasts 64 MiB along chain 0 -> 1 -> ... and checks
// every byte that arrived.
int nccl_rank(const char* id_file, int nranks, int rank) {
  auto g = cuda::nccl_group::join(read_bytes(id_file), nranks, rank, rank);
  if (!g) return std::fprintf(stderr, "rank %d: %s\n", rank, g.message().c_str()), 1;
  const size_t n = size_t(64) << 20;
  std::vector<uint8_t> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = uint8_t(rank == 0 ? (i * 131 + 7) : 0);
  void* dev = nullptr;
  if (cudaMalloc(&dev, n) != cudaSuccess || cudaMemcpy(dev, host.data(), n, cudaMemcpyHostToDevice) != cudaSuccess)
    return 1;
  std::vector<int> chain;
  for (int r = 0; r < nranks; ++r) chain.push_back(r);
  auto st = (*g)->chain_broadcast(dev, n, chain, size_t(4) << 20);
  if (!st) return std::fprintf(stderr, "rank %d: %s\n", rank, st.message().c_str()), 1;
  cudaMemcpy(host.data(), dev, n, cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < n; ++i)
    if (host[i] != uint8_t(i * 131 + 7)) return std::fprintf(stderr, "rank %d: byte %zu wrong\n", rank, i), 1;
  return 0;
}

}  // namespace

TEST_CASE("an NCCL chain over every GPU delivers a buffer intact to each rank") {
  int n = 0;
  cudaGetDeviceCount(&n);
  if (n < 2) {
    MESSAGE("the NCCL chain needs 2 GPUs, this machine has " << n << ": not run");
    return;
  }
  auto id = cuda::nccl_group::new_id();
  REQUIRE_MESSAGE(id, id.message());
  std::string file = "/tmp/strata-nccl-" + std::to_string(::getpid()) + ".id";
  REQUIRE(write_bytes(file, id->data(), id->size()));
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    std::string ranks = std::to_string(n), rank = std::to_string(r);
    char self_exe[] = "/proc/self/exe", flag[] = "--nccl-rank";
    std::vector<char*> args{self_exe, flag, file.data(), ranks.data(), rank.data(), nullptr};
    pid_t pid = 0;
    REQUIRE(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, args.data(), environ) == 0);
    pids.push_back(pid);
  }
  for (auto pid : pids) {
    int ws = 0;
    REQUIRE(waitpid(pid, &ws, 0) == pid);
    CHECK((WIFEXITED(ws) && WEXITSTATUS(ws) == 0));
  }
  std::remove(file.c_str());
}
#endif

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--ipc-child") == 0) return ipc_child(argv[2], argv[3]);
#ifdef STRATA_HAVE_NCCL
  if (argc == 5 && std::strcmp(argv[1], "--nccl-rank") == 0) return nccl_rank(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
#endif
  auto devs = strata::cuda::devices();
  if (!devs) {
    std::printf("SKIP: no usable CUDA device (%s)\n", devs.message().c_str());
    return 77;
  }
  for (auto& d : *devs)
    std::printf("device %d: %s, %zu MiB, %d SMs, sm_%d%d\n", d.index, d.name.c_str(), d.total_memory >> 20, d.sm_count,
                d.compute_major, d.compute_minor);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
