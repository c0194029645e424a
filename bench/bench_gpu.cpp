// The CUDA backend against the limits of the GPU it runs on, all measured in the same run:
//
//   build/bin/bench_gpu [--dim 2048 --hidden 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000]
//                       [--steps 32] [--device 0]
//
// 1. HBM bandwidth: a 1 GiB device-to-device copy (read + write bytes per second). Decode at
//    batch B streams every weight once per step, so weight_bytes / step_time over that rate is
//    the fraction of the bandwidth limit reached, at batch 1 and 32.
// 2. Host-to-GPU loading: every layer through gpu_shard::load_layer (fp32 -> bf16 on the host into
//    pinned staging, copy on a copy stream) against a plain pinned cudaMemcpy of the same bytes.
// 3. IPC loading: a second process loads every layer from this one's device memory (CUDA IPC,
//    device-to-device) against a plain device-to-device cudaMemcpy.
// Without a CUDA device it says so and exits 0 (nothing to measure).
#include <climits>
#include <cuda_runtime.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "apps/args.hpp"
#include "bench/bench_util.hpp"
#include "cuda/device.hpp"
#include "cuda/head.hpp"
#include "cuda/shard.hpp"

using namespace strata;
using strata::bench::clk;
using strata::bench::median;

namespace {

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

#define BENCH_CUDA(call)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                   \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

// Best of 5 timed copies of `bytes`; returns bytes per second moved (for D2D: read + write).
double copy_rate(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, double traffic_factor) {
  double best = 0;
  for (int rep = 0; rep < 6; ++rep) {
    BENCH_CUDA(cudaDeviceSynchronize());
    auto t0 = clk::now();
    BENCH_CUDA(cudaMemcpy(dst, src, bytes, kind));
    BENCH_CUDA(cudaDeviceSynchronize());
    if (rep > 0) best = std::max(best, traffic_factor * double(bytes) / seconds_since(t0));
  }
  return best;
}

// A shard for every layer of `c`, with KV slots for `sequences` sequences of `positions`.
expected<std::unique_ptr<cuda::gpu_shard>> whole_model_shard(const model_config& c, int device, int sequences,
                                                             int positions) {
  cuda::shard_options o;
  o.device = device;
  o.max_rows = 64;
  o.max_sequences = sequences;
  o.kv_positions = positions;
  return cuda::gpu_shard::create(c, 0, c.n_layers, o);
}

// The importing side of 3: loads every layer from the exporter and prints the seconds it took.
int ipc_import(const model_config& c, int device, const char* file) {
  std::ifstream f(file, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto peer = cuda::ipc_layers::from_bytes(bytes);
  if (!peer) return std::fprintf(stderr, "%s\n", peer.message().c_str()), 1;
  auto g = whole_model_shard(c, device, 1, 64);
  if (!g) return std::fprintf(stderr, "%s\n", g.message().c_str()), 1;
  auto t0 = clk::now();
  for (int l = 0; l < c.n_layers; ++l)
    if (auto st = (*g)->load_layer_from_peer(l, *peer); !st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  if (auto st = (*g)->wait_loaded(); !st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  std::printf("%.6f\n", seconds_since(t0));
  return 0;
}

}  // namespace

namespace {
int run(int argc, char** argv) {
  auto a = args::parse(argc, argv, 1,
                       {"dim", "hidden", "layers", "heads", "kv-heads", "vocab", "steps", "device", "ipc-import"});
  if (!a) return std::fprintf(stderr, "%s\n", a.message().c_str()), 2;
  auto devs = cuda::devices();
  if (!devs) {
    std::printf("SKIP: no usable CUDA device (%s)\n", devs.message().c_str());
    return 0;
  }
  int device = int(a->integer("device", 0, 0, INT32_MAX));
  BENCH_CUDA(cudaSetDevice(device));
  auto c = model_config::llama(int(a->integer("dim", 2048, 0, INT32_MAX)), int(a->integer("hidden", 5632, 0, INT32_MAX)),
                               int(a->integer("layers", 22, 0, INT32_MAX)), int(a->integer("heads", 32, 0, INT32_MAX)),
                               int(a->integer("kv-heads", 4, 0, INT32_MAX)), int(a->integer("vocab", 32000, 0, INT32_MAX)), 2048);
  int steps = int(a->integer("steps", 32, 0, INT32_MAX));
  if (a->has("ipc-import")) return ipc_import(c, device, a->str("ipc-import").c_str());
  std::printf("device %d: %s, %d SMs\nmodel: %s\n\n", device, (*devs)[size_t(device)].name.c_str(),
              (*devs)[size_t(device)].sm_count, c.describe().c_str());

  // 1. Limits.
  const size_t probe = size_t(1) << 30;
  void *d0 = nullptr, *d1 = nullptr, *pinned = nullptr;
  BENCH_CUDA(cudaMalloc(&d0, probe));
  BENCH_CUDA(cudaMalloc(&d1, probe));
  BENCH_CUDA(cudaMallocHost(&pinned, probe));
  double hbm = copy_rate(d1, d0, probe, cudaMemcpyDeviceToDevice, 2.0);
  double h2d = copy_rate(d0, pinned, probe, cudaMemcpyHostToDevice, 1.0);
  BENCH_CUDA(cudaFree(d0));
  BENCH_CUDA(cudaFree(d1));
  BENCH_CUDA(cudaFreeHost(pinned));
  std::printf("limits: HBM copy traffic %.0f GB/s, pinned host-to-device %.1f GB/s\n\n", hbm / 1e9, h2d / 1e9);

  // 2. Loading every layer, against the pinned copy rate of the same (bf16) bytes.
  auto m = make_random_model(c, 1, "bench");
  auto g = whole_model_shard(c, device, 32, 1024);
  if (!g) return std::fprintf(stderr, "%s\n", g.message().c_str()), 1;
  auto t0 = clk::now();
  for (int l = 0; l < c.n_layers; ++l)
    if (auto st = (*g)->load_layer(l, *m->layers[size_t(l)]); !st)
      return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  if (auto st = (*g)->wait_loaded(); !st) return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
  double load_s = seconds_since(t0);
  double wbytes = double((*g)->stats().weight_bytes);
  std::printf("load %d layers (%.0f MiB bf16): %.3f s = %.1f GB/s, %.2f of pinned copy bandwidth "
              "(includes fp32->bf16 conversion on one host core)\n\n",
              c.n_layers, wbytes / (1 << 20), load_s, wbytes / load_s / 1e9, wbytes / load_s / h2d);

  // 3. A second process loads the layers from this one's device memory.
  {
    auto x = (*g)->export_layers();
    if (!x) return std::fprintf(stderr, "%s\n", x.message().c_str()), 1;
    std::string file = "/tmp/strata-bench-ipc-" + std::to_string(::getpid());
    auto bytes = x->to_bytes();
    std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    std::string cmd = "/proc/" + std::to_string(::getpid()) + "/exe";
    std::string line;
    {
      std::string full = cmd + " --ipc-import " + file;
      for (auto k : {"dim", "hidden", "layers", "heads", "kv-heads", "vocab", "device"})
        if (a->has(k)) full += std::string(" --") + k + " " + a->str(k);
      FILE* p = ::popen(full.c_str(), "r");
      char buf[128] = {0};
      if (p && std::fgets(buf, sizeof buf, p)) line = buf;
      if (p) ::pclose(p);
    }
    std::remove(file.c_str());
    double secs = std::atof(line.c_str());
    if (secs <= 0) return std::fprintf(stderr, "the IPC importer failed\n"), 1;
    std::printf("IPC load of %d layers in another process: %.3f s = %.1f GB/s, %.2f of device copy bandwidth\n\n",
                c.n_layers, secs, wbytes / secs / 1e9, wbytes / secs / (hbm / 2));
  }

  // 4. Decode at batch 1 and 32: one row per sequence per step, positions advancing, every layer
  // and the head (final norm, classifier, greedy sampling) on the device.
  cuda::head_options ho;
  ho.device = device;
  auto head = cuda::gpu_head::create(*m, ho);
  if (!head) return std::fprintf(stderr, "%s\n", head.message().c_str()), 1;
  const double step_bytes = wbytes + double(c.vocab_size) * c.dim * 2;  // layers + bf16 classifier
  std::printf("%-6s %12s %12s %14s %14s\n", "batch", "step ms", "tokens/s", "weight GB/s", "of HBM limit");
  seq_id next = 1;
  for (int batch : {1, 32}) {
    std::vector<seq_id> seqs(static_cast<size_t>(batch));
    for (auto& s : seqs) s = next++;
    std::vector<int> pos(static_cast<size_t>(batch), 0);
    std::vector<float> x(size_t(batch) * size_t(c.dim), 0.01f);
    std::vector<sampling_params> params(static_cast<size_t>(batch));
    std::vector<uint64_t> rng(static_cast<size_t>(batch), 1);
    std::vector<int32_t> tokens(static_cast<size_t>(batch));
    std::vector<double> times;
    for (int step = 0; step < steps + 2; ++step) {
      auto ts = clk::now();
      if (auto st = (*g)->forward(0, c.n_layers, seqs.data(), pos.data(), batch, x.data()); !st)
        return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
      if (auto st = (*head)->sample(x.data(), batch, params.data(), rng.data(), tokens.data()); !st)
        return std::fprintf(stderr, "%s\n", st.message().c_str()), 1;
      if (step >= 2) times.push_back(seconds_since(ts));  // two warm-up steps (cuBLAS heuristics)
      for (auto& p : pos) ++p;
    }
    for (auto s : seqs) (*g)->release(s);
    double t = median(times);
    double rate = step_bytes / t;
    std::printf("%-6d %12.3f %12.0f %14.0f %14.2f\n", batch, t * 1e3, batch / t, rate / 1e9, rate / hbm);
  }
  std::printf("\n(a step: every layer and the head on the device; the embedding row gather stays on the host)\n");
  return 0;
}
}  // namespace

int main(int argc, char** argv) { return strata::guarded_main("bench_gpu", argc, argv, run); }
