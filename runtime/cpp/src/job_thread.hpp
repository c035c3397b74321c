// One worker thread that runs jobs one at a time, in the order given (PipelinedPolicy's retrieval jobs).
//
// Why not std::async: it started a thread per job, one a decoding step, and starting it took 20-30 us on the
// decoding thread (the caller of start_pending). A thread kept for the policy's life takes a job with one
// lock and one wake-up, and runs the jobs in order by construction (two jobs never touch the policy at once).
//
// The thread runs at a lower priority (WORKER_NICE above the process's): on a small host its job shares a core with
// the decoding thread, and woken at normal priority it took the core at once. Python's drafter measured the
// library call that starts the job at 0.04-0.5 ms a step on average (at worst the whole job, run before the call
// returned), 0.03-0.04 ms at nice 10-19 (README, issue 18, stop 49). The job still runs at once on an idle core.
#pragma once

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "evospec/drafter.hpp"

namespace evospec::detail {

constexpr int WORKER_NICE = 10;  // the worker's nice value above the process's, unless EVOSPEC_WORKER_NICE says

// EVOSPEC_WORKER_NICE as a nice increment (WORKER_NICE when unset, 0 keeps the process's); anything but a whole
// number from 0 to 39 is refused.
inline int worker_nice_setting() {
  const char* value = std::getenv("EVOSPEC_WORKER_NICE");
  if (value == nullptr || *value == '\0') return WORKER_NICE;
  const std::string text(value);
  if (text.size() > 2 || text.find_first_not_of("0123456789") != std::string::npos || std::stoi(text) > 39)
    throw SettingsError("EVOSPEC_WORKER_NICE must be a whole number from 0 to 39 (the policy worker's nice value "
                        "above the process's; 0 keeps it), got '" + text + "'");
  return std::stoi(text);
}

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
    lower_priority();
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

  // This thread's nice value ``nice_increment_`` above the process's; where the system refuses, it runs as it is.
  void lower_priority() const {
    if (nice_increment_ == 0) return;
    const id_t self = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    const int now = getpriority(PRIO_PROCESS, self);
    if (errno == 0) setpriority(PRIO_PROCESS, self, std::min(now + nice_increment_, 19));
  }

  const int nice_increment_ = worker_nice_setting();  // read when the policy is made: a bad value fails there
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<Result()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace evospec::detail
