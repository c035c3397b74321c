// The host LM head over resident rows through oneDNN's packed product: the leading columns that stay put packed
// once, the rest packed again after each change (runtime/packed_head.py, whose rule this mirrors exactly so
// that both runtimes draft alike).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace evospec::detail {

constexpr int64_t kPackAfterCalls = 8;    // calls in a window (PACK_AFTER_CALLS)
constexpr int64_t kMinPackedRows = 1024;  // MIN_PACKED_ROWS: the shortest prefix packed (a whole set: any)
constexpr int64_t kStableWindows = 4;     // STABLE_WINDOWS: windows a column stays put through before it is packed

class PackedHead {
 public:
  PackedHead(bool packable, int64_t bucket) : packable_(packable), bucket_(bucket), low_(bucket) {}
  // Columns from ``low`` on were rewritten (a new bucket: every row is new).
  void changed(int64_t low, int64_t bucket);
  // normed [N, d] @ rows.T + bias -> [N, bucket].
  at::Tensor logits(const at::Tensor& normed, const at::Tensor& rows, const at::Tensor& bias);
  int64_t packed_rows() const { return packed_rows_; }

 private:
  bool packable_;
  int64_t bucket_;
  at::Tensor prefix_;  // oneDNN's copy of rows[:packed_rows_]
  int64_t packed_rows_ = 0;
  at::Tensor tail_;  // oneDNN's copy of rows[packed_rows_:], until the next change
  int64_t calls_ = 0;  // calls in the current window
  int64_t low_;        // lowest column changed in the current window
  std::vector<int64_t> recent_;  // the same, for the last kStableWindows - 1 windows closed (oldest first)
  int64_t cut_ = -1;  // a prefix dropped by a change inside it: its columns before the change (-1: none)
};

// Whether this libtorch has oneDNN's packed linear (and EVOSPEC_HEAD_KERNEL does not fix another kernel).
bool packed_linear_available(const at::Tensor& rows);

}  // namespace evospec::detail
