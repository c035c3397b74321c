#include "gather.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_set>

#include "evospec/drafter.hpp"

namespace evospec::detail {

int64_t choose_bucket(int64_t size, const std::vector<int64_t>& buckets) {
  std::vector<int64_t> sorted(buckets);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t b : sorted)
    if (size <= b) return b;
  throw SettingsError("an active set of " + std::to_string(size) + " rows does not fit the largest bucket " +
                      std::to_string(sorted.back()) + "; compile with a larger --buckets entry");
}

GatherPlan make_plan(const std::vector<int64_t>& active, const std::vector<int64_t>& buckets) {
  if (active.empty()) throw SettingsError("an active set needs at least one id");
  GatherPlan plan;
  plan.size = static_cast<int64_t>(active.size());
  plan.ids = active;
  plan.ids.resize(choose_bucket(plan.size, buckets), 0);
  return plan;
}

int64_t update_columns(const int64_t* previous_ids, int64_t previous_size, int64_t bucket, const int64_t* active,
                       int64_t size, int64_t* ids) {
  // A mask over ids, not a hash set: this runs on the decoding thread every step, and hashing 16k ids twice
  // took milliseconds there. 1: wanted; 2: wanted and kept in its column.
  int64_t top = 0;
  for (int64_t j = 0; j < size; ++j) {
    if (active[j] < 0) throw SettingsError("an active set holds the negative id " + std::to_string(active[j]));
    top = std::max(top, active[j]);
  }
  for (int64_t j = 0; j < bucket; ++j) top = std::max(top, previous_ids[j]);
  std::vector<uint8_t> mark(static_cast<size_t>(top) + 1, 0);
  for (int64_t j = 0; j < size; ++j) {
    if (mark[active[j]]) throw SettingsError("an active set lists id " + std::to_string(active[j]) + " twice");
    mark[active[j]] = 1;
  }
  std::fill(ids, ids + bucket, -1);
  int64_t keep = std::min(previous_size, size);
  for (int64_t j = 0; j < keep; ++j)
    if (mark[previous_ids[j]]) ids[j] = previous_ids[j], mark[previous_ids[j]] = 2;  // retained ids stay put
  std::vector<int64_t> holes;
  for (int64_t j = 0; j < size; ++j)
    if (ids[j] < 0) holes.push_back(j);
  if (holes.empty() && size == previous_size) {
    std::copy(previous_ids, previous_ids + bucket, ids);
    return -1;  // the same set: nothing moves
  }
  size_t next = 0;
  for (int64_t j = 0; j < size; ++j)  // new ids fill the holes in the order the policy listed them
    if (mark[active[j]] != 2) ids[holes[next++]] = active[j];
  std::fill(ids + size, ids + bucket, 0);
  return static_cast<int64_t>(holes.size());
}

GatherPlan update_plan(const GatherPlan& previous, const std::vector<int64_t>& active,
                       const std::vector<int64_t>& buckets, int64_t& moved) {
  int64_t size = static_cast<int64_t>(active.size());
  int64_t bucket = choose_bucket(size, buckets);
  if (previous.ids.empty() || previous.bucket() != bucket) {
    GatherPlan plan = make_plan(active, buckets);
    moved = plan.size;
    return plan;
  }
  GatherPlan plan;
  plan.size = size;
  plan.ids.resize(bucket);
  moved = update_columns(previous.ids.data(), previous.size, bucket, active.data(), size, plan.ids.data());
  if (moved < 0) {
    moved = 0;
    return previous;
  }
  return plan;
}

ResidentRows::ResidentRows(at::Tensor reservoir, const GatherPlan& plan)
    : reservoir_(std::move(reservoir)),
      rows_(reservoir_.index_select(0, at::tensor(plan.ids, at::kLong))),
      plan_(plan),
      head_(packed_linear_available(rows_), plan.bucket()) {
  set_bias();
}

void ResidentRows::set_bias() {
  bias_ = at::zeros({plan_.bucket()}, at::kFloat);
  if (plan_.size < plan_.bucket()) bias_.narrow(0, plan_.size, plan_.bucket() - plan_.size).fill_(-INFINITY);
}

void ResidentRows::follow(const GatherPlan& plan) {
  if (plan.bucket() != plan_.bucket()) {
    rows_ = reservoir_.index_select(0, at::tensor(plan.ids, at::kLong));
    head_.changed(0, plan.bucket());
  } else {
    std::vector<int64_t> cols, ids;  // ascending columns
    for (int64_t j = 0; j < plan.bucket(); ++j)
      if (plan.ids[j] != plan_.ids[j]) cols.push_back(j), ids.push_back(plan.ids[j]);
    if (!cols.empty()) {
      copy_rows(cols, ids);
      head_.changed(cols.front(), plan.bucket());
    }
  }
  bool resize = plan.size != plan_.size || plan.bucket() != plan_.bucket();
  plan_ = plan;
  if (resize) set_bias();
}

void copy_rows_prefetched(char* out, const char* in, size_t row_bytes, const int64_t* cols, const int64_t* ids,
                          size_t count) {
  // the rows are scattered over the reservoir (and the head): ask for the rows a few copies ahead, so their
  // cache misses overlap instead of stalling one row at a time
  constexpr size_t AHEAD = 8, LINE = 64;
  for (size_t i = 0; i < count; ++i) {
    if (i + AHEAD < count) {
      const char* next_in = in + ids[i + AHEAD] * row_bytes;
      char* next_out = out + cols[i + AHEAD] * row_bytes;
#if defined(__GNUC__)
      for (size_t b = 0; b < row_bytes; b += LINE) {
        __builtin_prefetch(next_in + b, 0);
        __builtin_prefetch(next_out + b, 1);
      }
#endif
    }
    std::memcpy(out + cols[i] * row_bytes, in + ids[i] * row_bytes, row_bytes);
  }
}

void ResidentRows::copy_rows(const std::vector<int64_t>& cols, const std::vector<int64_t>& ids) {
  if (rows_.is_contiguous() && reservoir_.is_contiguous() && rows_.dtype() == reservoir_.dtype() && rows_.is_cpu()) {
    // a row at a time on this thread (Python's ActiveRows._copy): index_select + index_copy_ copied every moved row
    // twice, through two ATen ops (~1,200 rows a step at K = 16,384 with EvoSpec's mass fill: 0.23 ms)
    copy_rows_prefetched(static_cast<char*>(rows_.data_ptr()), static_cast<const char*>(reservoir_.data_ptr()),
                         static_cast<size_t>(rows_.size(1)) * rows_.element_size(), cols.data(), ids.data(),
                         cols.size());
    return;
  }
  rows_.index_copy_(0, at::tensor(cols, at::kLong), reservoir_.index_select(0, at::tensor(ids, at::kLong)));
}

void ResidentRows::refresh(const std::vector<int64_t>& ids) {
  std::unordered_set<int64_t> changed(ids.begin(), ids.end());
  std::vector<int64_t> cols, col_ids;
  for (int64_t j = 0; j < plan_.bucket(); ++j)
    if (changed.count(plan_.ids[j])) cols.push_back(j), col_ids.push_back(plan_.ids[j]);
  if (!cols.empty()) {
    copy_rows(cols, col_ids);
    head_.changed(cols.front(), plan_.bucket());
  }
}

}  // namespace evospec::detail
