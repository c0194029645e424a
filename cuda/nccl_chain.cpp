#include "cuda/nccl_chain.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>

namespace strata::cuda {

namespace {

std::string nccl_error(const char* what, ncclResult_t r) { return std::string(what) + ": " + ncclGetErrorString(r); }

#define STRATA_NCCL_TRY(call)                                               \
  do {                                                                      \
    ncclResult_t r_ = (call);                                               \
    if (r_ != ncclSuccess) return make_error(nccl_error(#call, r_));        \
  } while (0)

#define STRATA_RT_TRY(call)                                                                          \
  do {                                                                                               \
    cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess) return make_error(std::string(#call) + ": " + cudaGetErrorString(e_));    \
  } while (0)

}  // namespace

expected<std::vector<uint8_t>> nccl_group::new_id() {
  ncclUniqueId id;
  STRATA_NCCL_TRY(ncclGetUniqueId(&id));
  return std::vector<uint8_t>(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof id);
}

expected<std::unique_ptr<nccl_group>> nccl_group::join(const std::vector<uint8_t>& id, int nranks, int rank,
                                                       int device) {
  if (id.size() != sizeof(ncclUniqueId))
    return make_error("NCCL id of " + std::to_string(id.size()) + " bytes, expected " + std::to_string(sizeof(ncclUniqueId)));
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return make_error("NCCL rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  STRATA_RT_TRY(cudaSetDevice(device));
  ncclUniqueId uid;
  std::memcpy(&uid, id.data(), sizeof uid);
  std::unique_ptr<nccl_group> g(new nccl_group());
  g->rank_ = rank;
  g->nranks_ = nranks;
  g->device_ = device;
  cudaStream_t s = nullptr;
  STRATA_RT_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  g->stream_ = s;
  ncclComm_t comm = nullptr;
  STRATA_NCCL_TRY(ncclCommInitRank(&comm, nranks, uid, rank));
  g->comm_ = comm;
  return g;
}

nccl_group::~nccl_group() {
  if (comm_) ncclCommDestroy(static_cast<ncclComm_t>(comm_));
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

status nccl_group::chain_broadcast(void* buf, size_t bytes, const std::vector<int>& chain, size_t chunk_bytes,
                                   std::chrono::milliseconds deadline) {
  auto me = std::find(chain.begin(), chain.end(), rank_);
  if (me == chain.end() || bytes == 0) return {};
  for (int r : chain)
    if (r < 0 || r >= nranks_) return make_error("chain names rank " + std::to_string(r) + " of " + std::to_string(nranks_));
  if (chunk_bytes == 0) return make_error("chunk size must be positive");
  if (!comm_) return make_error("the NCCL communicator was aborted by an earlier failure");
  auto comm = static_cast<ncclComm_t>(comm_);
  auto stream = static_cast<cudaStream_t>(stream_);
  STRATA_RT_TRY(cudaSetDevice(device_));
  size_t pos = size_t(me - chain.begin());
  int prev = pos > 0 ? chain[pos - 1] : -1;
  int next = pos + 1 < chain.size() ? chain[pos + 1] : -1;
  const size_t chunks = (bytes + chunk_bytes - 1) / chunk_bytes;
  auto* base = static_cast<uint8_t*>(buf);
  auto len = [&](size_t k) { return std::min(chunk_bytes, bytes - k * chunk_bytes); };
  // Step k: receive chunk k from prev while sending chunk k-1 (the root: chunk k) to next.
  for (size_t k = 0; k <= chunks; ++k) {
    bool recv = prev >= 0 && k < chunks;
    long send = next < 0 ? -1 : prev >= 0 ? long(k) - 1 : long(k);
    bool sending = send >= 0 && size_t(send) < chunks;
    if (!recv && !sending) continue;
    STRATA_NCCL_TRY(ncclGroupStart());
    if (recv) STRATA_NCCL_TRY(ncclRecv(base + k * chunk_bytes, len(k), ncclUint8, prev, comm, stream));
    if (sending)
      STRATA_NCCL_TRY(ncclSend(base + size_t(send) * chunk_bytes, len(size_t(send)), ncclUint8, next, comm, stream));
    STRATA_NCCL_TRY(ncclGroupEnd());
  }
  // Wait with a deadline: a dead peer leaves NCCL waiting forever, so abort the communicator.
  auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return {};
    if (q != cudaErrorNotReady) return make_error(std::string("chain broadcast: ") + cudaGetErrorString(q));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm, &async);
    bool late = std::chrono::steady_clock::now() > until;
    if (async != ncclSuccess || late) {
      ncclCommAbort(comm);
      comm_ = nullptr;
      return make_error(late ? "chain broadcast: no completion within " + std::to_string(deadline.count()) +
                                   " ms (a peer died or stalled); communicator aborted"
                             : nccl_error("chain broadcast", async));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

}  // namespace strata::cuda
