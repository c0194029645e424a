// Parameter multicast between GPUs with NCCL: a communicator is joined ahead of time (so a scaling
// event does not pay for ncclCommInitRank), then any subset of its ranks forms a chain that
// forwards a device buffer chunk by chunk: each step's receive of chunk k and send of chunk k-1
// are one NCCL group, so every hop of the chain is busy at once (BlitzScale's chain over the
// compute network). Every NCCL and CUDA status is checked; a transfer has a deadline, after which
// the communicator is aborted and the caller gets an error instead of a hang.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata::cuda {

class nccl_group {
 public:
  // A fresh communicator id (rank 0 makes it and hands the bytes to the others out of band).
  static expected<std::vector<uint8_t>> new_id();
  // Joins as `rank` of `nranks` on CUDA device `device`; blocks until every rank has joined.
  static expected<std::unique_ptr<nccl_group>> join(const std::vector<uint8_t>& id, int nranks, int rank, int device);
  ~nccl_group();
  nccl_group(const nccl_group&) = delete;
  nccl_group& operator=(const nccl_group&) = delete;

  int rank() const { return rank_; }
  int size() const { return nranks_; }

  // chain[0] holds `bytes` at `buf` (device memory); every later rank of `chain` receives them
  // into its own `buf`. Ranks not in the chain return at once. Call on every rank of the chain.
  status chain_broadcast(void* buf, size_t bytes, const std::vector<int>& chain, size_t chunk_bytes,
                         std::chrono::milliseconds deadline = std::chrono::seconds(60));

 private:
  nccl_group() = default;
  void* comm_ = nullptr;    // ncclComm_t
  void* stream_ = nullptr;  // cudaStream_t
  int rank_ = 0, nranks_ = 0, device_ = 0;
};

}  // namespace strata::cuda
