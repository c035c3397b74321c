#include "packed_head.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace evospec::detail {

namespace {

// The ops torch.ops.mkldnn._reorder_linear_weight / _linear_pointwise call from Python, looked up once.
const std::optional<c10::OperatorHandle>& reorder_op() {
  static const auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  return op;
}

const std::optional<c10::OperatorHandle>& packed_linear_op() {
  static const auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op;
}

at::Tensor call_boxed(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

at::Tensor pack(const at::Tensor& rows) { return call_boxed(*reorder_op(), {rows.contiguous(), c10::IValue()}); }

at::Tensor packed_logits(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias) {
  return call_boxed(*packed_linear_op(),
                    {x, packed, bias, std::string("none"), c10::List<std::optional<at::Scalar>>(), std::string("")});
}

}  // namespace

bool packed_linear_available(const at::Tensor& rows) {
  const char* forced = std::getenv("EVOSPEC_HEAD_KERNEL");  // as Python: only unset or "onednn" packs
  bool allowed = forced == nullptr || std::string(forced).empty() || std::string(forced) == "onednn";
  return allowed && at::hasMKLDNN() && rows.scalar_type() == at::kFloat && rows.device().is_cpu() &&
         reorder_op().has_value() && packed_linear_op().has_value();
}

void PackedHead::changed(int64_t low, int64_t bucket) {
  if (bucket != bucket_) bucket_ = bucket, low = 0;
  low_ = std::min(low_, low);
  if (cut_ >= 0) cut_ = std::min(cut_, low);
  if (low < packed_rows_) prefix_ = at::Tensor(), packed_rows_ = 0, cut_ = low;
  tail_ = at::Tensor();
}

at::Tensor PackedHead::logits(const at::Tensor& normed, const at::Tensor& rows, const at::Tensor& bias) {
  if (!packable_) return at::linear(normed, rows) + bias;
  int64_t n = rows.size(0);
  if (cut_ >= 0) {  // the columns before a change inside the prefix, packed again
    if (cut_ >= kMinPackedRows) prefix_ = pack(rows.narrow(0, 0, cut_)), packed_rows_ = cut_;
    cut_ = -1;
  }
  if (++calls_ > kPackAfterCalls) {
    int64_t stable = low_;
    for (int64_t low : recent_) stable = std::min(stable, low);
    bool grows = stable == n || stable >= packed_rows_ + kMinPackedRows;
    if (grows && stable > packed_rows_) {
      prefix_ = pack(rows.narrow(0, 0, stable)), packed_rows_ = stable, tail_ = at::Tensor();
    }
    recent_.push_back(low_);
    if (static_cast<int64_t>(recent_.size()) > kStableWindows - 1) recent_.erase(recent_.begin());
    calls_ = 1, low_ = bucket_;  // this call opens the next window
  }
  int64_t p = packed_rows_;
  if (!tail_.defined() && p < n) tail_ = pack(rows.narrow(0, p, n - p));
  at::Tensor x = normed.contiguous();
  if (p == 0) return packed_logits(x, tail_, bias);
  at::Tensor front = packed_logits(x, prefix_, bias.narrow(0, 0, p));
  return p == n ? front : at::cat({front, packed_logits(x, tail_, bias.narrow(0, p, n - p))}, 1);
}

}  // namespace evospec::detail
