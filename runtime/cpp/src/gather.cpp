#include "gather.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
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

GatherPlan update_plan(const GatherPlan& previous, const std::vector<int64_t>& active,
                       const std::vector<int64_t>& buckets, int64_t& moved) {
  int64_t size = static_cast<int64_t>(active.size());
  int64_t bucket = choose_bucket(size, buckets);
  if (previous.ids.empty() || previous.bucket() != bucket) {
    GatherPlan plan = make_plan(active, buckets);
    moved = plan.size;
    return plan;
  }
  std::unordered_set<int64_t> wanted(active.begin(), active.end());
  GatherPlan plan;
  plan.size = size;
  plan.ids.assign(bucket, -1);
  int64_t keep = std::min(previous.size, size);
  for (int64_t j = 0; j < keep; ++j)
    if (wanted.count(previous.ids[j])) plan.ids[j] = previous.ids[j];  // retained ids stay put
  std::vector<int64_t> holes;
  for (int64_t j = 0; j < size; ++j)
    if (plan.ids[j] < 0) holes.push_back(j);
  if (holes.empty() && size == previous.size) {
    moved = 0;
    return previous;  // the same set: nothing moves
  }
  std::unordered_set<int64_t> placed;
  for (int64_t j = 0; j < size; ++j)
    if (plan.ids[j] >= 0) placed.insert(plan.ids[j]);
  size_t next = 0;
  for (int64_t id : active)  // new ids fill the holes in the order the policy listed them
    if (!placed.count(id)) plan.ids[holes[next++]] = id;
  std::fill(plan.ids.begin() + size, plan.ids.end(), 0);
  moved = static_cast<int64_t>(holes.size());
  return plan;
}

namespace {

// oneDNN's packed linear, the ops torch.ops.mkldnn._reorder_linear_weight / _linear_pointwise call from Python.
std::optional<c10::OperatorHandle> mkldnn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

at::Tensor call_boxed(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

ResidentRows::ResidentRows(at::Tensor reservoir, const GatherPlan& plan) : reservoir_(std::move(reservoir)), plan_(plan) {
  rows_ = reservoir_.index_select(0, at::tensor(plan_.ids, at::kLong));
  set_bias();
  const char* forced = std::getenv("EVOSPEC_HEAD_KERNEL");  // as Python: only unset or "onednn" packs
  bool allowed = forced == nullptr || std::string(forced).empty() || std::string(forced) == "onednn";
  packable_ = allowed && at::hasMKLDNN() && rows_.scalar_type() == at::kFloat && rows_.device().is_cpu() &&
              mkldnn_op("mkldnn::_reorder_linear_weight") && mkldnn_op("mkldnn::_linear_pointwise");
}

at::Tensor ResidentRows::logits(const at::Tensor& normed) {
  ++calls_;
  if (!packed_.defined() && packable_ && calls_ > kPackAfterCalls)
    packed_ = call_boxed(*mkldnn_op("mkldnn::_reorder_linear_weight"), {rows_, c10::IValue()});
  if (!packed_.defined()) return at::linear(normed, rows_) + bias_;
  return call_boxed(*mkldnn_op("mkldnn::_linear_pointwise"),
                    {normed.contiguous(), packed_, bias_, std::string("none"),
                     c10::List<std::optional<at::Scalar>>(), std::string("")});
}

void ResidentRows::set_bias() {
  bias_ = at::zeros({plan_.bucket()}, at::kFloat);
  if (plan_.size < plan_.bucket()) bias_.narrow(0, plan_.size, plan_.bucket() - plan_.size).fill_(-INFINITY);
}

void ResidentRows::follow(const GatherPlan& plan) {
  if (plan.bucket() != plan_.bucket()) {
    rows_ = reservoir_.index_select(0, at::tensor(plan.ids, at::kLong));
  } else {
    std::vector<int64_t> cols, ids;
    for (int64_t j = 0; j < plan.bucket(); ++j)
      if (plan.ids[j] != plan_.ids[j]) cols.push_back(j), ids.push_back(plan.ids[j]);
    if (!cols.empty())
      rows_.index_copy_(0, at::tensor(cols, at::kLong), reservoir_.index_select(0, at::tensor(ids, at::kLong)));
    if (!cols.empty()) rows_changed();
  }
  if (plan.bucket() != plan_.bucket()) rows_changed();
  bool resize = plan.size != plan_.size || plan.bucket() != plan_.bucket();
  plan_ = plan;
  if (resize) set_bias();
}

void ResidentRows::refresh(const std::vector<int64_t>& ids) {
  std::unordered_set<int64_t> changed(ids.begin(), ids.end());
  std::vector<int64_t> cols, col_ids;
  for (int64_t j = 0; j < plan_.bucket(); ++j)
    if (changed.count(plan_.ids[j])) cols.push_back(j), col_ids.push_back(plan_.ids[j]);
  if (!cols.empty()) {
    rows_.index_copy_(0, at::tensor(cols, at::kLong), reservoir_.index_select(0, at::tensor(col_ids, at::kLong)));
    rows_changed();
  }
}

}  // namespace evospec::detail
