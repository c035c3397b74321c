// One worker thread that runs jobs one at a time, in the order given (PipelinedPolicy's retrieval jobs).
//
// Why not std::async: it started a thread per job, one a decoding step, and starting it took 20-30 us on the
// decoding thread (the caller of start_pending). A thread kept for the policy's life takes a job with one
// lock and one wake-up, and runs the jobs in order by construction (two jobs never touch the policy at once).
#pragma once

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

namespace evospec::detail {

template <typename Result>
class JobThread {
 public:
  JobThread() = default;
  JobThread(const JobThread&) = delete;
  JobThread& operator=(const JobThread&) = delete;
  ~JobThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    if (thread_.joinable()) thread_.join();  // runs the jobs still queued first
  }

  // Queue ``job`` (started on the first call); its result, or its exception, comes through the future.
  template <typename F>
  std::future<Result> submit(F&& job) {
    std::packaged_task<Result()> task(std::forward<F>(job));
    std::future<Result> result = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.push_back(std::move(task));
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    }
    wake_.notify_one();
    return result;
  }

 private:
  void loop() {
    while (true) {
      std::packaged_task<Result()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, nothing left
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<Result()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace evospec::detail
