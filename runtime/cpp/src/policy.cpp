#include "policy.hpp"

#include <algorithm>
#include <numeric>
#include <unordered_set>

#include "evospec/drafter.hpp"
#include "json.hpp"

namespace evospec::detail {

TokenFrequencies TokenFrequencies::load(const std::string& path) {
  json::Value data;
  try {
    data = json::parse_file(path);
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (what.rfind("cannot read", 0) == 0)
      throw SettingsError("frequency file " + path + " does not exist (make one with `evospec vocab frequencies`)");
    throw SettingsError("frequency file " + path + " is not valid JSON: " + what);
  }
  if (!data.has("format") || data.at("format").kind != json::Value::Kind::String ||
      data.at("format").string != "evospec-token-frequencies/1")
    throw SettingsError(path + " is not an evospec token-frequency file");
  TokenFrequencies f;
  f.vocab_size = data.at("vocab_size").as_int();
  f.counts.assign(f.vocab_size, 0);
  for (const auto& [token, count] : data.at("counts").object) f.counts.at(std::stoll(token)) = count.as_int();
  if (data.has("successors") && !data.at("successors").is_null()) {
    f.has_successors = true;
    for (const auto& [token, next] : data.at("successors").object) {
      std::vector<int64_t>& list = f.successors[std::stoll(token)];
      for (const auto& x : next.array) list.push_back(x.as_int());
    }
  }
  return f;
}

std::vector<int64_t> TokenFrequencies::ranked(int64_t k, int64_t vocab) const {
  if (vocab != vocab_size)
    throw SettingsError("frequency table counts " + std::to_string(vocab_size) + " token ids but the model has " +
                        std::to_string(vocab) + "; count with the target's own tokenizer");
  if (k < 1 || k > vocab_size)
    throw SettingsError("K must be in [1, " + std::to_string(vocab_size) + "] (got " + std::to_string(k) + ")");
  std::vector<int64_t> ids(vocab_size);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  ids.resize(k);
  return ids;
}

std::vector<int64_t> TokenFrequencies::top(int64_t k, int64_t vocab) const {
  std::vector<int64_t> ids = ranked(k, vocab);
  std::sort(ids.begin(), ids.end());
  return ids;
}

namespace {

// One OpenMP thread for the calling thread (the count is per thread): the job's few ATen ops (the semantic
// query's projection) must not start a team of their own beside the target's pass on a small host (Python's
// runtime/worker_threads.py). Weak: resolved from the OpenMP runtime libtorch loads, absent without one.
extern "C" void omp_set_num_threads(int) __attribute__((weak));

}  // namespace

void PipelinedPolicy::drain() {
  pending_.reset();
  while (!queue_.empty()) {
    queue_.front().wait();
    queue_.pop_front();
  }
}

void PipelinedPolicy::start_pending() {
  if (!pending_) return;
  Job job = std::move(*pending_);
  pending_.reset();
  queue_.push_back(worker_.submit([this, job = std::move(job)]() -> Computed {
    if (omp_set_num_threads != nullptr) omp_set_num_threads(1);
    c10::InferenceMode guard;  // thread-local: as the drafter's own calls run
    // What Python's worker runs for this observation, in order
    inner_->served(job.served);
    inner_->observe(job.committed, job.state);
    auto active = inner_->active_ids();
    return {std::move(active), inner_->fill_start()};
  }));
}

void PipelinedPolicy::reset(const std::vector<int64_t>& prompt) {
  drain();
  fresh_.clear();
  added_ = 0;
  inner_->reset(prompt);
  current_ = served_ = inner_->active_ids();
  fill_start_ = inner_->fill_start();
  evidence_end_ = fill_start_ < 0 ? static_cast<int64_t>(current_.size()) : fill_start_;
}

void PipelinedPolicy::observe(const std::vector<int64_t>& committed, const at::Tensor& state) {
  start_pending();  // the previous observation's job, if the caller did not start it
  if (inner_->patches_fresh()) fresh_ = inner_->fresh(committed);
  pending_ = Job{committed, state.defined() ? state.clone() : at::Tensor(), served_};
}

std::vector<int64_t> PipelinedPolicy::active_ids() {
  while (!queue_.empty()) {  // started jobs are the older observations' (due); the newest one is pending
    Computed computed = queue_.front().get();  // rethrows the job's error here
    queue_.pop_front();
    current_ = std::move(computed.first);
    fill_start_ = computed.second;
  }
  served_ = current_;
  added_ = 0;
  int64_t n = static_cast<int64_t>(current_.size());
  evidence_end_ = fill_start_ < 0 ? n : fill_start_;
  if (fresh_.empty()) return served_;
  // Python's PipelinedPolicy._patch: what the set lacks, appended while it is under K, then in place of its
  // last entries that are not fresh themselves (the last fresh ones when too few are not); never over the core
  // membership of the few fresh ids in the K-id set through a mask, not a hash set of K ids (decoding thread)
  std::vector<uint8_t> in = membership(current_);
  int64_t top = static_cast<int64_t>(in.size()) - 1;
  std::vector<int64_t> add;
  int64_t core = inner_->core_size();
  int64_t k = std::max(core + inner_->tail_size(), n);
  for (int64_t t : fresh_)
    if (static_cast<int64_t>(add.size()) < k - core && !(t <= top && in[t])) add.push_back(t);
  if (add.empty()) return served_;
  int64_t cut = n + static_cast<int64_t>(add.size()) - k;
  if (cut > 0) {
    std::unordered_set<int64_t> fresh(fresh_.begin(), fresh_.end());
    std::vector<char> drop(static_cast<size_t>(n), 0);
    int64_t found = 0;
    for (int64_t p = n - 1; p >= core && found < cut; --p)
      if (!fresh.count(current_[p])) drop[p] = 1, ++found;
    for (int64_t p = n - 1; p >= core && found < cut; --p)
      if (!drop[p]) drop[p] = 1, ++found;
    served_.clear();
    for (int64_t p = 0; p < n; ++p) {
      if (!drop[p]) served_.push_back(current_[p]);
      else if (p < evidence_end_) --evidence_end_;
    }
  }
  served_.insert(served_.end(), add.begin(), add.end());
  added_ = add.size();
  return served_;
}

std::vector<int64_t> PipelinedPolicy::kept_ids() {
  // Python's PipelinedPolicy.kept_ids: the served set without the worker set's frequency fill
  size_t n = served_.size();
  size_t cut = std::min(static_cast<size_t>(evidence_end_), n - added_);
  std::vector<int64_t> kept(served_.begin(), served_.begin() + cut);
  kept.insert(kept.end(), served_.end() - added_, served_.end());
  return kept;
}

}  // namespace evospec::detail
