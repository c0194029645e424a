#include "dataflow/thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace strata {

namespace {

// Spins up to ~50 us for `ready` before a thread sleeps on a condition variable. A decode step
// is ~100 parallel_fors microseconds apart, and on a VM a futex wake costs tens of microseconds
// (perf of a bf16 decode: 8 % of the time in the kernel's wake path).
template <class Ready>
void spin_for(Ready ready) {
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned i = 1; !ready(); ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(50)) return;
  }
}

}  // namespace

struct thread_pool::job {
  const std::function<void(size_t, size_t)>* fn;
  size_t n, chunk, n_chunks;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
};

thread_pool::thread_pool(size_t threads) {
  for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
    epoch_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void thread_pool::run_chunks(job& j) {
  for (;;) {
    size_t c = j.next.fetch_add(1);
    if (c >= j.n_chunks) return;
    size_t b = c * j.chunk, e = std::min(j.n, b + j.chunk);
    (*j.fn)(b, e);
    if (j.done.fetch_add(1) + 1 == j.n_chunks) {
      std::lock_guard<std::mutex> g(j.mu);
      j.cv.notify_all();
    }
  }
}

void thread_pool::worker_loop() {
  for (;;) {
    std::shared_ptr<job> j;
    {
      std::unique_lock<std::mutex> g(mu_);
      if (!stop_ && queue_.empty()) {
        const uint64_t seen = epoch_.load();
        g.unlock();
        spin_for([&] { return epoch_.load(std::memory_order_acquire) != seen; });
        g.lock();
      }
      cv_.wait(g, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      j = queue_.front();
      if (j->next.load() >= j->n_chunks) {  // exhausted: drop it and look again
        queue_.pop_front();
        continue;
      }
    }
    run_chunks(*j);
  }
}

void thread_pool::parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  size_t max_chunks = (n + grain - 1) / grain;
  size_t n_chunks = std::min(max_chunks, concurrency() * 4);
  if (n_chunks <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  auto j = std::make_shared<job>();
  j->fn = &fn;
  j->n = n;
  j->chunk = (n + n_chunks - 1) / n_chunks;
  j->n_chunks = (n + j->chunk - 1) / j->chunk;
  {
    std::lock_guard<std::mutex> g(mu_);
    queue_.push_back(j);
    epoch_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  run_chunks(*j);
  spin_for([&] { return j->done.load() == j->n_chunks; });
  std::unique_lock<std::mutex> g(j->mu);
  j->cv.wait(g, [&] { return j->done.load() == j->n_chunks; });
  // Workers drop exhausted jobs lazily; remove ours now so the queue cannot grow.
  std::lock_guard<std::mutex> q(mu_);
  queue_.erase(std::remove(queue_.begin(), queue_.end(), j), queue_.end());
}

namespace {
std::mutex default_mu;
std::unique_ptr<thread_pool> default_instance;
size_t default_size() {
  if (const char* s = std::getenv("STRATA_THREADS")) {
    long v = std::atol(s);
    if (v > 0) return size_t(v);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}
}  // namespace

thread_pool& default_pool() {
  std::lock_guard<std::mutex> g(default_mu);
  if (!default_instance) default_instance = std::make_unique<thread_pool>(default_size() - 1);
  return *default_instance;
}

void set_default_threads(size_t threads) {
  std::lock_guard<std::mutex> g(default_mu);
  default_instance = std::make_unique<thread_pool>(std::max<size_t>(threads, 1) - 1);
}

}  // namespace strata
