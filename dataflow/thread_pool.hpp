// A fork-join pool for the CPU kernels. Several actors may call parallel_for at once (each
// from its own CAF worker); jobs queue up and every caller also works on its own job, so a
// call never waits for a thread that is busy elsewhere without making progress itself.
#pragma once

#include <atomic>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace strata {

class thread_pool {
 public:
  explicit thread_pool(size_t threads);  // threads = extra workers besides the caller
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  // Calls fn(begin, end) over [0, n) in chunks of at least `grain`, and returns when all ran.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);
  size_t concurrency() const { return workers_.size() + 1; }

 private:
  struct job;
  void worker_loop();
  static void run_chunks(job& j);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<job>> queue_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
  std::atomic<uint64_t> epoch_{0};  // bumped per queued job (and at stop): what idle workers spin on
};

// The process-wide pool used by the kernels. Size: STRATA_THREADS, else the number of cores.
thread_pool& default_pool();
// Replaces the default pool's size (call before first use, e.g. from a --threads flag).
void set_default_threads(size_t threads);

}  // namespace strata
