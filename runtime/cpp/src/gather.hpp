// Gather plans and resident rows (runtime/gather.py, runtime/active_rows.py): which reservoir
// rows the head scores, padded to a bucket, and the gathered copy kept between steps.
//
// The column order must equal Python's exactly: top-k breaks ties by column, and the ids of the
// draft tree are read through the plan. So ``update_plan`` keeps every retained id in its column
// and fills holes with the new ids in the order the policy listed them, as Python does.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "packed_head.hpp"

namespace evospec::detail {

struct GatherPlan {
  std::vector<int64_t> ids;  // [bucket] target id per head column; padding: 0
  int64_t size = 0;          // active columns (they come first)
  int64_t bucket() const { return static_cast<int64_t>(ids.size()); }
};

// Smallest bucket holding ``size``; throws SettingsError (Python's message) when none does.
int64_t choose_bucket(int64_t size, const std::vector<int64_t>& buckets);
GatherPlan make_plan(const std::vector<int64_t>& active, const std::vector<int64_t>& buckets);
// update_plan within one bucket, over raw buffers: ``ids`` [bucket] gets the new plan's ids (retained ids in their
// columns, new ones in the freed columns in the order ``active`` lists them, padding 0); returns the columns given a
// new id, or -1 when ``active`` is the previous set (``ids`` then equals ``previous_ids``). SettingsError for a
// negative or repeated id.
int64_t update_columns(const int64_t* previous_ids, int64_t previous_size, int64_t bucket, const int64_t* active,
                       int64_t size, int64_t* ids);
// A plan for ``active`` keeping retained ids in their columns; ``moved``: columns that changed.
GatherPlan update_plan(const GatherPlan& previous, const std::vector<int64_t>& active,
                       const std::vector<int64_t>& buckets, int64_t& moved);

// Row ids[i] of ``in`` to row cols[i] of ``out`` (rows of ``row_bytes``), one memcpy a row, the rows a few copies
// ahead prefetched: moved rows are scattered over a reservoir of ~100 MB, and one cache miss at a time stalled.
void copy_rows_prefetched(char* out, const char* in, size_t row_bytes, const int64_t* cols, const int64_t* ids,
                          size_t count);

// The active rows, gathered once and then refreshed by deltas (only changed columns are copied).
// The head over them packs the leading columns that stay put (PackedHead), as Python's ActiveRows does.
class ResidentRows {
 public:
  ResidentRows(at::Tensor reservoir, const GatherPlan& plan);
  void follow(const GatherPlan& plan);           // copy the columns whose id changed
  void refresh(const std::vector<int64_t>& ids);  // re-copy active columns of rows changed in place
  at::Tensor logits(const at::Tensor& normed) { return head_.logits(normed, rows_, bias_); }  // ActiveHeadStage
  const at::Tensor& rows() const { return rows_; }    // [bucket, d]
  const at::Tensor& bias() const { return bias_; }    // [bucket] 0 / -inf
  at::Tensor& reservoir() { return reservoir_; }

 private:
  at::Tensor reservoir_, rows_, bias_;
  GatherPlan plan_;
  PackedHead head_;
  void set_bias();
  void copy_rows(const std::vector<int64_t>& cols, const std::vector<int64_t>& ids);  // reservoir rows ids -> cols
};

}  // namespace evospec::detail
