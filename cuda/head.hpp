// The end of a forward pass on a CUDA device: final RMSNorm, the classifier GEMM (cuBLAS, fp32
// accumulation) and sampling per row on the device, so the [rows, vocab] logits only leave it
// when asked for. Same contract as the CPU tail (strata::final_logits + strata::sample): greedy
// is the first argmax; with a temperature, a multinomial draw in vocabulary order; with top-p,
// the draw among the most likely tokens whose mass first exceeds top_p, in descending order.
// Each row's coin is drawn on the host from its request's RNG state exactly as the CPU sampler
// draws it, so a request keeps one random stream wherever its tail runs.
//
// Without a device, create() returns the CUDA runtime's reason.
#pragma once

#include <cstdint>
#include <memory>

#include "cuda/shard.hpp"
#include "dataflow/expected.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/model/model.hpp"

namespace strata::cuda {

struct head_options {
  int device = 0;
  weight_type type = weight_type::bf16;  // the classifier's type on the device
  int max_rows = 256;                    // rows per device pass (more are done in several)
};

class gpu_head {
 public:
  static expected<std::unique_ptr<gpu_head>> create(const model& m, const head_options& o = {});
  ~gpu_head();
  gpu_head(const gpu_head&) = delete;
  gpu_head& operator=(const gpu_head&) = delete;

  // Hidden states x[rows, dim] (host) to one token per row, advancing rng[r] as strata::sample
  // does; logits[rows, vocab] (host) before sampling when `logits` is not null.
  status sample(const float* x, int rows, const sampling_params* p, uint64_t* rng, int32_t* tokens,
                float* logits = nullptr);

  struct impl;

 private:
  gpu_head() = default;
  std::unique_ptr<impl> impl_;
};

}  // namespace strata::cuda
