// EAGLE's dynamic draft tree (runtime/tree.py), the chain as its width-1 case, deterministic
// (top-k) choices; with StepCosts, the value-based budget (runtime/tree.py's rule, decision for decision). Expansion writes scratch KV slots past the committed length; the next step
// overwrites them, so a rejected branch costs nothing to roll back.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <utility>

#include "evospec/drafter.hpp"

namespace evospec::detail {

struct TreeRequest {
  at::Tensor hidden;  // [1, d] drafter pre-norm state at the last committed position
  at::Tensor logits;  // [A] head logits there (active columns only)
  int64_t committed = 0, width = 1, depth = 1, budget = 1;
  const StepCosts* costs = nullptr;  // a value-based budget (Python's DraftRequest.costs); null: the best ``budget``
  double temperature = 0;            // > 0 with width 1: a sampled chain, one of ``uniforms`` a level
  const double* uniforms = nullptr;
  int64_t siblings = 0;              // width 1, temperature 0: second choices at the first levels, as leaves
  double sibling_ratio = 0;          // > 0: only where the first choice is less than this many times as likely
};

// The drafter called on frontier states: (hidden [1, w, d], target ids [1, w], positions [1, w],
// cache slot of the first input, mask [w, start + w]) -> (hidden [1, w, d], logits [1, w, A]).
using Forward = std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                  int64_t, const at::Tensor&)>;

// ``id_map`` [A]: head column -> target id. ``capacity``: KV slots (expansion stops short of it).
DraftTree draft_tree(const Forward& forward, const at::Tensor& id_map, int64_t capacity, const TreeRequest& req);

}  // namespace evospec::detail
