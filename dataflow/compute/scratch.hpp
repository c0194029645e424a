// Buffers the CPU kernels keep per thread across calls.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>

namespace strata {

// n Ts of the calling thread's buffer for Tag, grown on demand (doubling) and never initialised.
// Fresh vectors per call cost a page fault per 4 KiB and a memset each time (40 % of a 256-token
// prefill of a 1024-wide model on the dev VM, perf). Callers write every element before reading
// it, so what an earlier call left changes nothing; one Tag per live use on a thread.
// 64-byte aligned: the kernels' 64-byte vector loads of a row then never straddle two cache lines.
template <class T, class Tag>
T* thread_buffer(size_t n) {
  struct release {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  thread_local std::unique_ptr<T[], release> p;
  thread_local size_t size = 0;
  if (n > size) {
    size = std::max(n, size * 2);
    p.reset(new (std::align_val_t(64)) T[size]);  // default-initialised: see above
  }
  return p.get();
}

}  // namespace strata
