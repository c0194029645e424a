// Transformer layers [begin, end) of a model on one CUDA device: the GPU counterpart of
// strata::forward_layer with the same contract (a flat batch of token rows, each one token of one
// sequence at one position, prefill and decode mixed), so a route can run some layers here and
// others on CPU shards. Weights are bf16 or fp16 in a device pool, GEMMs go through cuBLAS with
// fp32 accumulation, norms/RoPE/attention/SwiGLU are our kernels, the KV cache is fp32.
//
// Layers stream in while the shard serves: load_layer() converts a layer into one of two pinned
// staging buffers and copies it on a copy stream, so the next layer's conversion overlaps this
// copy; the layer is ready once its copy finishes (ready()), and forward() orders itself after
// the copies of the layers it runs.
//
// Without a device, create() returns the CUDA runtime's reason; nothing else is reachable.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/model/model.hpp"

namespace strata::cuda {

enum class weight_type : uint8_t { bf16, fp16 };

struct shard_options {
  int device = 0;
  weight_type type = weight_type::bf16;
  int max_rows = 512;       // rows per forward() call (activation buffers are sized for it)
  int max_sequences = 16;   // KV slots: sequences this shard holds at once
  int kv_positions = 0;     // positions per KV slot; 0: the model's seq_len
  size_t pool_bytes = 0;    // device pool; 0: exactly what the layers, KV slots and buffers need
  int sm_count = 0;         // SMs for this shard's kernels (a green context); 0: the whole GPU
};

struct shard_stats {
  size_t pool_bytes = 0, pool_in_use = 0;
  size_t weight_bytes = 0, kv_bytes = 0;
  int layers_ready = 0;
  int sequences = 0;
  int sm_count = 0;  // SMs its kernels may use (the partition's, rounded to the GPU's granularity)
};

// What another process on the same GPU needs to copy a shard's layers device-to-device: a CUDA
// IPC handle of the shard's device pool and where each layer's tensors sit in it. Travels as
// bytes (to_bytes/from_bytes) in a control message.
struct ipc_layers {
  std::vector<uint8_t> handle;  // cudaIpcMemHandle_t
  int device = 0;
  weight_type type = weight_type::bf16;
  int begin = 0, end = 0;
  std::vector<uint64_t> offsets;  // per layer, per layer_weights::parts(): bytes into the pool
  std::vector<uint8_t> to_bytes() const;
  static expected<ipc_layers> from_bytes(const std::vector<uint8_t>& b);
};

class gpu_shard {
 public:
  static expected<std::unique_ptr<gpu_shard>> create(const model_config& c, int begin, int end,
                                                     const shard_options& o = {});
  ~gpu_shard();
  gpu_shard(const gpu_shard&) = delete;
  gpu_shard& operator=(const gpu_shard&) = delete;

  // Starts copying layer `layer`'s weights to the device (asynchronous; converts on the host).
  status load_layer(int layer, const layer_weights& w);
  // Whether layer `layer`'s copy has finished (a layer-ready event for the loader).
  bool ready(int layer) const;
  // Blocks until every started load has landed, or returns the copy's error.
  status wait_loaded();

  // The layers this shard holds, for peers in other processes on the same GPU.
  expected<ipc_layers> export_layers() const;
  // Loads layer `layer` from such a peer: device-to-device, no host round trip (the peer must
  // hold it, with the same weight type and model shape, and keep it until ready()).
  status load_layer_from_peer(int layer, const ipc_layers& peer);

  // Runs layers [first, last) (all within this shard, all loaded or loading) on host rows
  // x[rows, dim] in place. Errors as forward_layer: bad positions, unknown layers, full KV slots.
  status forward(int first, int last, const seq_id* seqs, const int* pos, int rows, float* x);

  // HAS-GPU's vertical scaling: moves the shard's kernels to a partition of `sms` SMs (a CUDA
  // green context; 0 or >= the GPU's SMs: the whole GPU), between two forward() calls. The count
  // is rounded up to the GPU's partition granularity; stats().sm_count says what it got.
  status set_sm_count(int sms);

  int length(seq_id s) const;
  void release(seq_id s);

  // KV migration, as kv_cache::export_seq / import_seq: a sequence's keys and values for layers
  // [begin, end) copied to the host, and a slice from any shard (CPU or GPU) stored here.
  expected<kv_slice> export_seq(seq_id seq, int begin, int end) const;
  status import_seq(const kv_slice& x);
  shard_stats stats() const;

  struct impl;

 private:
  gpu_shard() = default;
  std::unique_ptr<impl> impl_;
};

}  // namespace strata::cuda
