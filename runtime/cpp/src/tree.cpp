#include "tree.hpp"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace evospec::detail {

DraftTree draft_tree(const Forward& forward, const at::Tensor& id_map, int64_t capacity, const TreeRequest& req) {
  // A living vocabulary can be smaller than the tree width: never ask top-k for more than exists.
  int64_t w = std::min(req.width, req.logits.size(-1));
  auto choose = [w](const at::Tensor& logits) {  // _choose, deterministic: top-w log-probabilities
    at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
    return logp.topk(w, -1);
  };
  auto [scores0, ids0] = choose(req.logits.unsqueeze(0));  // [1, w]
  std::vector<at::Tensor> cand_ids{ids0[0]}, cand_scores{scores0[0]};
  std::vector<int64_t> parents(w, -1), depths(w, 1);
  at::Tensor frontier = at::arange(w, at::kLong);
  at::Tensor frontier_scores = scores0[0];
  at::Tensor frontier_hidden = req.hidden.expand({w, -1});
  int64_t scratch = w * (req.depth - 1);
  at::Tensor visible = at::zeros({w, std::max<int64_t>(scratch, 1)}, at::kBool);
  int64_t n_cand = w;
  for (int64_t level = 1; level < req.depth; ++level) {
    int64_t start = req.committed + (level - 1) * w;
    if (start + w > capacity) break;
    for (int64_t r = 0; r < w; ++r) visible.index_put_({r, (level - 1) * w + r}, true);
    at::Tensor mask = at::cat({at::ones({w, req.committed}, at::kBool), visible.narrow(1, 0, level * w)}, 1);
    at::Tensor target_ids = id_map.index_select(0, at::cat(cand_ids).index_select(0, frontier));
    at::Tensor positions = at::full({1, w}, req.committed - 1 + level, at::kLong);
    auto [hidden, logits] = forward(frontier_hidden.unsqueeze(0), target_ids.unsqueeze(0), positions, start, mask);
    auto [scores, ids] = choose(logits[0]);  // [w, w]
    at::Tensor cum = frontier_scores.unsqueeze(1) + scores;
    cand_ids.push_back(ids.flatten());
    cand_scores.push_back(cum.flatten());
    for (int64_t r = 0; r < w; ++r)
      for (int64_t c = 0; c < w; ++c) parents.push_back(frontier[r].item<int64_t>()), depths.push_back(level + 1);
    at::Tensor best = std::get<1>(cum.flatten().topk(w));
    at::Tensor rows = at::floor_divide(best, w);
    frontier = best + n_cand;
    frontier_scores = cum.flatten().index_select(0, best);
    frontier_hidden = hidden[0].index_select(0, rows);
    visible = visible.index_select(0, rows);
    n_cand += w * w;
  }
  // _select: keep the budget best by (-score, depth, index); ancestors rank before descendants.
  at::Tensor all_scores = at::cat(cand_scores).contiguous();
  std::vector<float> sc(all_scores.data_ptr<float>(), all_scores.data_ptr<float>() + all_scores.numel());
  std::vector<int64_t> order(sc.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (sc[a] != sc[b]) return sc[a] > sc[b];
    if (depths[a] != depths[b]) return depths[a] < depths[b];
    return a < b;
  });
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(req.budget)));
  std::sort(order.begin(), order.end());
  std::unordered_map<int64_t, int64_t> new_index;
  for (size_t i = 0; i < order.size(); ++i) new_index[order[i]] = static_cast<int64_t>(i);
  at::Tensor draft_ids = at::cat(cand_ids).index_select(0, at::tensor(order, at::kLong));
  at::Tensor tokens = id_map.index_select(0, draft_ids).contiguous();
  DraftTree tree;
  tree.tokens.assign(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
  for (int64_t i : order) {
    auto it = new_index.find(parents[i]);
    tree.parents.push_back(it == new_index.end() ? -1 : it->second);
    tree.depths.push_back(depths[i]);
  }
  return tree;
}

}  // namespace evospec::detail
