#include "packed_prefix.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace evospec::detail {

namespace {

// The ops torch.ops.mkldnn._reorder_linear_weight / _linear_pointwise call from Python.
std::optional<c10::OperatorHandle> mkldnn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

at::Tensor call_boxed(const char* name, std::vector<c10::IValue> stack) {
  mkldnn_op(name)->callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

bool packed_linear_available(const at::Tensor& rows) {
  const char* forced = std::getenv("EVOSPEC_HEAD_KERNEL");  // as Python: only unset or "onednn" packs
  bool allowed = forced == nullptr || std::string(forced).empty() || std::string(forced) == "onednn";
  return allowed && at::hasMKLDNN() && rows.scalar_type() == at::kFloat && rows.device().is_cpu() &&
         mkldnn_op("mkldnn::_reorder_linear_weight") && mkldnn_op("mkldnn::_linear_pointwise");
}

void PackedPrefix::changed(int64_t low, int64_t bucket) {
  if (bucket != bucket_) bucket_ = bucket, low = 0;
  low_ = std::min(low_, low);
  if (low < packed_rows_) packed_ = at::Tensor(), packed_rows_ = 0;
}

at::Tensor PackedPrefix::logits(const at::Tensor& normed, const at::Tensor& rows, const at::Tensor& bias) {
  if (++calls_ > kPackAfterCalls) {
    bool whole_or_long = low_ == rows.size(0) || low_ >= kMinPackedRows;
    if (packable_ && whole_or_long && low_ > packed_rows_) {
      packed_ = call_boxed("mkldnn::_reorder_linear_weight", {rows.narrow(0, 0, low_).contiguous(), c10::IValue()});
      packed_rows_ = low_;
    }
    calls_ = 1, low_ = bucket_;  // this call opens the next window
  }
  int64_t p = packed_rows_;
  if (p == 0) return at::linear(normed, rows) + bias;
  at::Tensor x = normed.contiguous();
  at::Tensor front = call_boxed("mkldnn::_linear_pointwise", {x, packed_, bias.narrow(0, 0, p), std::string("none"),
                                                              c10::List<std::optional<at::Scalar>>(), std::string("")});
  if (p == rows.size(0)) return front;
  int64_t rest = rows.size(0) - p;
  return at::cat({front, at::linear(x, rows.narrow(0, p, rest)) + bias.narrow(0, p, rest)}, 1);
}

}  // namespace evospec::detail
