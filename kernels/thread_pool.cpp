#include "thread_pool.h"

#ifdef __linux__
#include <sched.h>
#endif

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace pagedmlx {
namespace {

constexpr int kSpinIterations = 20000;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads) {
    for (int worker = 1; worker < threads_; ++worker) {
      std::thread([this, worker] { work(worker); }).detach();
    }
  }

  int size() const { return threads_; }

  void run(int shares, const std::function<void(int)>& share) {
    if (shares <= 1 || threads_ == 1) {
      for (int i = 0; i < shares; ++i) share(i);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &share;
      shares_ = shares;
      pending_.store(shares - 1);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    share(0);
    while (pending_.load(std::memory_order_acquire) > 0) {
    }
  }

 private:
  void work(int worker) {
    unsigned seen = 0;
    for (;;) {
      unsigned now = generation_.load(std::memory_order_acquire);
      for (int spin = 0; now == seen && spin < kSpinIterations; ++spin) {
        now = generation_.load(std::memory_order_acquire);
      }
      if (now == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        now = generation_.load();
      }
      seen = now;
      if (worker < shares_) {
        (*task_)(worker);
        pending_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  const int threads_;
  std::mutex mutex_, run_mutex_;
  std::condition_variable wake_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* task_ = nullptr;
  int shares_ = 0;
};

int configured_threads() {
  if (const char* env = std::getenv("PAGEDMLX_THREADS")) {
    int threads = std::atoi(env);
    if (threads > 0) return threads;
  }
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
  return static_cast<int>(std::thread::hardware_concurrency());
}

// Never destroyed: its detached workers live as long as the process.
ThreadPool& pool() {
  static ThreadPool* instance = new ThreadPool(configured_threads());
  return *instance;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(int count, const std::function<void(int, int)>& fn) {
  if (count <= 0) return;
  int shares = std::min(count, pool().size());
  pool().run(shares, [&](int share) {
    int begin = static_cast<int>(static_cast<long>(count) * share / shares);
    int end = static_cast<int>(static_cast<long>(count) * (share + 1) / shares);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace pagedmlx
