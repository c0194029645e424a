// The CUDA backend's interface in a build without nvcc: every entry point fails with the same
// reason, so CPU-only builds link and a request for a GPU gets a clear error instead.
#include "cuda/head.hpp"
#include "cuda/shard.hpp"

namespace strata::cuda {

namespace {
error absent() { return make_error("this build has no CUDA backend (nvcc was not found when it was configured)"); }
}  // namespace

struct gpu_shard::impl {};
struct gpu_head::impl {};

expected<std::unique_ptr<gpu_shard>> gpu_shard::create(const model_config&, int, int, const shard_options&) {
  return absent();
}
gpu_shard::~gpu_shard() = default;
status gpu_shard::load_layer(int, const layer_weights&) { return absent(); }
bool gpu_shard::ready(int) const { return false; }
status gpu_shard::wait_loaded() { return absent(); }
expected<ipc_layers> gpu_shard::export_layers() const { return absent(); }
status gpu_shard::load_layer_from_peer(int, const ipc_layers&) { return absent(); }
status gpu_shard::forward(int, int, const seq_id*, const int*, int, float*) { return absent(); }
status gpu_shard::set_sm_count(int) { return absent(); }
int gpu_shard::length(seq_id) const { return 0; }
void gpu_shard::release(seq_id) {}
expected<kv_slice> gpu_shard::export_seq(seq_id, int, int) const { return absent(); }
status gpu_shard::import_seq(const kv_slice&) { return absent(); }
shard_stats gpu_shard::stats() const { return {}; }

expected<std::unique_ptr<gpu_head>> gpu_head::create(const model&, const head_options&) { return absent(); }
gpu_head::~gpu_head() = default;
status gpu_head::sample(const float*, int, const sampling_params*, uint64_t*, int32_t*, float*) { return absent(); }

}  // namespace strata::cuda
