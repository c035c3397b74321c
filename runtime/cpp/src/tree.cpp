#include "tree.hpp"

#include "greedy_choice.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <tuple>
#include <unordered_map>

namespace evospec::detail {

namespace {

// The value-based budget, as runtime/tree.py computes it: values (log path acceptance) are float32
// tensors as Python's, read out as doubles (Python's tolist()); E and C are doubles, summed in Python's order.

// Python's EDGE_BINS as torch.tensor(EDGE_BINS) holds them: float32.
const std::vector<float> kEdgeBins{0.02f, 0.05f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f};
static_assert(StepCosts::kEdgeBins == 11, "kEdgeBins lists Python's EDGE_BINS");

at::Tensor log_rate(const StepCosts& c, const at::Tensor& logp) {  // StepCosts.log_rate
  if (c.rates.empty()) return logp;
  at::Tensor bins = at::bucketize(logp.exp(), at::tensor(kEdgeBins, at::kFloat), /*out_int32=*/false, /*right=*/true);
  if (c.rates.size() == 2 * (kEdgeBins.size() + 1)) {  // first choices (column 0), then other children
    const int64_t half = static_cast<int64_t>(kEdgeBins.size()) + 1;
    bins = bins + half;
    bins.select(-1, 0).sub_(half);
  }
  at::Tensor rates = at::tensor(c.rates, at::kDouble).clamp_min(1e-12).log();
  return rates.index_select(0, bins.flatten()).view(bins.sizes()).to(logp.scalar_type());
}

double value(double log_value) { return std::min(1.0, std::exp(log_value)); }  // StepCosts.value

double levels_ms(const StepCosts& c, const std::vector<int64_t>& level_rows) {
  double sum = 0.0;
  for (int64_t f : level_rows) sum += c.level_ms + static_cast<double>(f) * c.level_row_ms;
  return sum;
}

std::vector<double> doubles(const at::Tensor& t) {  // tolist() of a float32 tensor
  at::Tensor f = t.to(at::kFloat).contiguous();
  return std::vector<double>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

struct Prefix {
  int64_t kept;
  double tokens, cost;
};

Prefix value_prefix(const std::vector<double>& values, const std::vector<int64_t>& order, const StepCosts& c,
                    const std::vector<int64_t>& level_rows, const std::vector<int64_t>& spine = {}) {  // _value_prefix
  double tokens = 1.0, cost = c.fixed_ms + levels_ms(c, level_rows);
  for (int64_t i : spine) {  // kept whatever they are worth
    tokens = tokens + value(values[i]);
    cost = cost + c.row_ms;
  }
  int64_t kept = 0;
  for (int64_t i : order) {
    double p = value(values[i]);
    if (p * cost < tokens * c.row_ms) break;
    tokens = tokens + p;
    cost = cost + c.row_ms;
    ++kept;
  }
  return {kept, tokens, cost};
}

std::vector<double> expansion_gains(const StepCosts& c, const std::vector<double>& frontier, double tokens, double cost,
                                    int64_t room, double weakest = 1.0) {  // _expansion_gains
  std::vector<double> gains;
  for (size_t j = 0; j < frontier.size(); ++j) {
    double p = frontier[j];
    if (static_cast<int64_t>(j) < room)
      gains.push_back(cost * p - tokens * (c.row_ms + c.level_row_ms));
    else
      gains.push_back(cost * (p - weakest) - tokens * c.level_row_ms);
  }
  return gains;
}

bool level_pays(const StepCosts& c, const std::vector<double>& gains, double tokens) {  // _level_pays
  double sum = 0.0;
  for (double g : gains) sum += g;
  return sum > tokens * c.level_ms;
}

// _ranked: by (-score, depth, index), the spine left out; ancestors rank before descendants.
std::vector<int64_t> ranked(const std::vector<double>& scores, const std::vector<int64_t>& depths,
                            const std::vector<int64_t>& spine = {}) {
  std::vector<int64_t> order;
  for (int64_t i = 0; i < static_cast<int64_t>(scores.size()); ++i)
    if (std::find(spine.begin(), spine.end(), i) == spine.end()) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    if (depths[a] != depths[b]) return depths[a] < depths[b];
    return a < b;
  });
  return order;
}

// _paying_frontier: positions (ascending) of the frontier nodes worth expanding, or nothing when the level cannot pay.
// The spine's nodes count as kept, spine_depth rows are held for it, and tip (>= 0: the frontier position of the
// path's last node while it must grow) is always expanded.
std::optional<std::vector<int64_t>> paying_frontier(const TreeRequest& req, const std::vector<double>& frontier_values,
                                                    const std::vector<double>& values, const std::vector<int64_t>& depths,
                                                    const std::vector<int64_t>& level_rows,
                                                    const std::vector<int64_t>& spine, int64_t spine_depth, int64_t tip) {
  const StepCosts& c = *req.costs;
  std::vector<int64_t> order = ranked(values, depths, spine);
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(req.budget - spine_depth)));
  Prefix pre = value_prefix(values, order, c, level_rows, spine);
  int64_t room = req.budget - spine_depth - pre.kept;
  double weakest = pre.kept ? value(values[order[pre.kept - 1]]) : 1.0;
  std::vector<int64_t> by_value;
  for (int64_t i = 0; i < static_cast<int64_t>(frontier_values.size()); ++i)
    if (i != tip) by_value.push_back(i);
  std::stable_sort(by_value.begin(), by_value.end(),
                   [&](int64_t a, int64_t b) { return frontier_values[a] > frontier_values[b]; });
  std::vector<double> worth;
  for (int64_t i : by_value) worth.push_back(value(frontier_values[i]));
  std::vector<double> gains = expansion_gains(c, worth, pre.tokens, pre.cost, room, weakest);
  std::vector<int64_t> pays;
  std::vector<double> paying;
  for (size_t j = 0; j < gains.size(); ++j)
    if (gains[j] > 0) pays.push_back(by_value[j]), paying.push_back(gains[j]);
  if (tip >= 0) {  // the level is drafted for the path: the others pay only for their own rows
    pays.push_back(tip);
    std::sort(pays.begin(), pays.end());
    return pays;
  }
  if (pays.empty() || !level_pays(c, paying, pre.tokens)) return std::nullopt;
  std::sort(pays.begin(), pays.end());
  return pays;
}

std::vector<int64_t> range(size_t from, size_t to) {
  std::vector<int64_t> order(to > from ? to - from : 0);
  std::iota(order.begin(), order.end(), static_cast<int64_t>(from));
  return order;
}

// _chain_prefix: a chain's first spine_depth nodes kept whatever, then the rest in depth order while they pay;
// the count includes the spine.
Prefix chain_prefix(const std::vector<double>& values, const StepCosts& c, const std::vector<int64_t>& level_rows,
                    int64_t spine_depth) {
  size_t n = std::min<size_t>(static_cast<size_t>(spine_depth), values.size());
  Prefix pre = value_prefix(values, range(n, values.size()), c, level_rows, range(0, n));
  pre.kept += static_cast<int64_t>(n);
  return pre;
}

// runtime/sampling.py's ``sample``: the first index whose cumulative weight exceeds u (= uniform x total), in two
// levels (blocks of 1024, then inside the block), in doubles; where rounding put u at or past the total, the last
// index with weight.
constexpr int64_t kSampleBlock = 1024;

int64_t first_above(const std::vector<double>& cumulative, double u, const double* weights) {
  auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
  int64_t index = it - cumulative.begin();
  if (index >= static_cast<int64_t>(cumulative.size()))
    for (index = static_cast<int64_t>(cumulative.size()) - 1; index > 0 && !(weights[index] > 0); --index) {
    }
  return index;
}

int64_t sample_index(const at::Tensor& q, double uniform) {
  const double* w = q.data_ptr<double>();
  const int64_t n = q.numel();
  std::vector<double> sums, cumulative;
  for (int64_t start = 0; start < n; start += kSampleBlock) {
    double sum = 0;
    for (int64_t i = start; i < std::min(n, start + kSampleBlock); ++i) sum += w[i];
    sums.push_back(sum);
    cumulative.push_back((cumulative.empty() ? 0.0 : cumulative.back()) + sum);
  }
  double u = uniform * cumulative.back();
  int64_t block = first_above(cumulative, u, sums.data());
  int64_t start = block * kSampleBlock, size = std::min(kSampleBlock, n - start);
  std::vector<double> inside(size);
  double running = 0;
  for (int64_t i = 0; i < size; ++i) inside[i] = running += w[start + i];
  return start + first_above(inside, u - (block ? cumulative[block - 1] : 0.0), w + start);
}

// _draft_chain: one child per node; cumulative scores and values are Python floats (doubles) summed level by level.
// With a temperature, each level's token is drawn (Python's _choose: q = softmax(logits / T) in doubles, ``sample``)
// with the level's uniform, and its q kept.
DraftTree draft_chain(const Forward& forward, const at::Tensor& id_map, int64_t capacity, const TreeRequest& req) {
  const StepCosts* costs = req.costs;
  const bool sampled = req.temperature > 0;
  std::vector<at::Tensor> laws;
  // greedy siblings: the first req.siblings levels also keep their second choice (column, cumulative score)
  const int64_t siblings = !sampled && req.logits.size(-1) > 1 ? req.siblings : 0;
  // the kept second choices: column, level, log-probability (Python's sibling_pays decides which levels keep one)
  std::vector<at::Tensor> second;
  std::vector<int64_t> second_level;
  std::vector<double> second_logp;
  const double log_ratio = req.sibling_ratio > 0 ? std::log(req.sibling_ratio) : 0.0;
  int64_t level_now = 0;  // the level ``choose`` picks for
  auto choose = [&](const at::Tensor& logits) {  // [1, A] -> (log-probability [1, 1], column [1, 1])
    const int64_t level = level_now++;
    if (!sampled) {  // greedy_choice: what Python's drafter picks too (its _draft_chain through the C ABI)
      const at::Tensor row = logits.to(at::kFloat).contiguous();
      const GreedyChoice pick = greedy_choice(row.data_ptr<float>(), row.numel(), level < siblings);
      if (level < siblings && pick.second >= 0 &&
          (req.sibling_ratio <= 0 || static_cast<double>(pick.first_logp) - pick.second_logp < log_ratio)) {
        second.push_back(at::full({1}, pick.second, at::kLong));
        second_level.push_back(level);
        second_logp.push_back(static_cast<double>(pick.second_logp));
      }
      return std::make_tuple(at::full({1, 1}, pick.first_logp, at::kFloat), at::full({1, 1}, pick.first, at::kLong));
    }
    at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
    at::Tensor q = at::softmax(logits.to(at::kDouble) / req.temperature, -1)[0].contiguous();
    int64_t x = sample_index(q, req.uniforms[laws.size()]);
    laws.push_back(q);
    at::Tensor column = at::full({1, 1}, x, at::kLong);
    return std::make_tuple(logp.gather(-1, column), column);
  };
  auto [logp0, ids0] = choose(req.logits.unsqueeze(0));  // [1, 1]
  std::vector<at::Tensor> chosen{ids0[0]};
  std::vector<double> path{static_cast<double>(logp0[0][0].item<float>())};
  std::vector<double> values;  // log path acceptance
  if (costs) values.push_back(static_cast<double>(log_rate(*costs, logp0[0])[0].item<float>()));
  at::Tensor hidden = req.hidden.unsqueeze(0);  // [1, 1, d]
  std::vector<int64_t> level_rows;
  const int64_t spine_depth = costs ? std::min({costs->spine, req.depth, req.budget}) : 0;
  for (int64_t level = 1; level < std::min(req.depth, req.budget); ++level) {
    int64_t start = req.committed + level - 1;
    if (start + 1 > capacity) break;
    if (costs && level >= spine_depth) {  // the first spine_depth levels are drafted whatever
      Prefix pre = chain_prefix(values, *costs, level_rows, spine_depth);
      std::vector<double> gains = expansion_gains(*costs, {value(values.back())}, pre.tokens, pre.cost, 1);
      if (pre.kept < static_cast<int64_t>(values.size()) || !level_pays(*costs, gains, pre.tokens)) break;
    }
    at::Tensor mask = at::ones({1, start + 1}, at::kBool);
    at::Tensor positions = at::full({1, 1}, req.committed - 1 + level, at::kLong);
    auto out = forward(hidden, id_map.index_select(0, chosen.back()).unsqueeze(0), positions, start, mask);
    hidden = out.first;
    auto [logp, ids] = choose(out.second[0]);  // [1, 1]
    chosen.push_back(ids[0]);
    path.push_back(path.back() + static_cast<double>(logp[0][0].item<float>()));
    if (costs) values.push_back(values.back() + static_cast<double>(log_rate(*costs, logp[0])[0].item<float>()));
    level_rows.push_back(1);
  }
  size_t n = costs && !sampled ? static_cast<size_t>(chain_prefix(values, *costs, level_rows, spine_depth).kept)
                               : chosen.size();
  DraftTree tree;
  tree.level_rows = level_rows;
  if (n == 0) return tree;
  at::Tensor tokens = id_map.index_select(0, at::cat(std::vector<at::Tensor>(chosen.begin(), chosen.begin() + n))).contiguous();
  tree.tokens.assign(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
  for (size_t i = 0; i < n; ++i) {
    tree.parents.push_back(static_cast<int64_t>(i) - 1);
    tree.depths.push_back(static_cast<int64_t>(i) + 1);
    tree.scores.push_back(path[i]);
  }
  // after the chain, the second choices of its first levels: each a leaf under the chain's node one level up, so a
  // chain accepted in full is still a prefix of the nodes (Python's _draft_chain, in the same order)
  size_t extra = 0;  // the kept second choices of levels the chain reaches (levels only grow along ``second``)
  while (extra < second.size() && second_level[extra] < static_cast<int64_t>(n)) ++extra;
  if (extra > 0) {
    at::Tensor ids = id_map.index_select(0, at::cat(std::vector<at::Tensor>(second.begin(), second.begin() + extra))).contiguous();
    tree.tokens.insert(tree.tokens.end(), ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    for (size_t k = 0; k < extra; ++k) {
      const int64_t level = second_level[k];
      tree.parents.push_back(level - 1);
      tree.depths.push_back(level + 1);
      tree.scores.push_back((level == 0 ? 0.0 : path[level - 1]) + second_logp[k]);
    }
  }
  if (sampled) {  // every drawn node is kept (a value rule would bias their law): n == laws.size()
    tree.law_columns = req.logits.size(-1);
    for (size_t i = 0; i < n; ++i) tree.laws.insert(tree.laws.end(), laws[i].data_ptr<double>(),
                                                    laws[i].data_ptr<double>() + laws[i].numel());
  }
  return tree;
}

}  // namespace

DraftTree draft_tree(const Forward& forward, const at::Tensor& id_map, int64_t capacity, const TreeRequest& req) {
  // A living vocabulary can be smaller than the tree width: never ask top-k for more than exists.
  int64_t w = std::min(req.width, req.logits.size(-1));
  if (w == 1) return draft_chain(forward, id_map, capacity, req);
  const StepCosts* costs = req.costs;
  const int64_t spine_depth = costs ? std::min({costs->spine, req.depth, req.budget}) : 0;
  std::vector<int64_t> spine;  // candidates on the first-choice path, drafted whatever they are worth
  if (spine_depth > 0) spine.push_back(0);
  auto choose = [w](const at::Tensor& logits) {  // _choose, deterministic: top-w log-probabilities
    at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
    return logp.topk(w, -1);
  };
  auto [scores0, ids0] = choose(req.logits.unsqueeze(0));  // [1, w]
  std::vector<at::Tensor> cand_ids{ids0[0]}, cand_scores{scores0[0]};
  std::vector<double> values;  // log path acceptance of every candidate (with costs)
  at::Tensor frontier_values;
  if (costs) {
    frontier_values = log_rate(*costs, scores0[0]);
    values = doubles(frontier_values);
  }
  std::vector<int64_t> parents(w, -1), depths(w, 1), level_rows;
  at::Tensor frontier = at::arange(w, at::kLong);
  at::Tensor frontier_scores = scores0[0];
  at::Tensor frontier_hidden = req.hidden.expand({w, -1});
  int64_t scratch = w * (req.depth - 1);
  at::Tensor visible = at::zeros({w, std::max<int64_t>(scratch, 1)}, at::kBool);
  int64_t n_cand = w;
  for (int64_t level = 1; level < req.depth; ++level) {
    int64_t start = req.committed + (level - 1) * w;
    if (start + w > capacity) break;
    const bool grows = static_cast<int64_t>(spine.size()) < spine_depth;  // the path's tip is in the frontier
    auto position = [&](int64_t candidate) {  // of a candidate in the frontier
      at::Tensor at_ = (frontier == candidate).nonzero();
      return at_[0][0].item<int64_t>();
    };
    if (costs) {
      auto pays = paying_frontier(req, doubles(frontier_values), values, depths, level_rows, spine, spine_depth,
                                  grows ? position(spine.back()) : -1);
      if (!pays) break;
      at::Tensor here = at::tensor(*pays, at::kLong);
      frontier = frontier.index_select(0, here);
      frontier_scores = frontier_scores.index_select(0, here);
      frontier_hidden = frontier_hidden.index_select(0, here);
      visible = visible.index_select(0, here);
      frontier_values = frontier_values.index_select(0, here);
    }
    int64_t f = frontier.size(0);  // the level's drafter rows: w, or fewer under a value-based budget
    for (int64_t r = 0; r < f; ++r) visible.index_put_({r, (level - 1) * w + r}, true);
    at::Tensor mask = at::cat({at::ones({f, req.committed}, at::kBool), visible.narrow(1, 0, (level - 1) * w + f)}, 1);
    at::Tensor target_ids = id_map.index_select(0, at::cat(cand_ids).index_select(0, frontier));
    at::Tensor positions = at::full({1, f}, req.committed - 1 + level, at::kLong);
    auto [hidden, logits] = forward(frontier_hidden.unsqueeze(0), target_ids.unsqueeze(0), positions, start, mask);
    auto [scores, ids] = choose(logits[0]);  // [f, w]
    at::Tensor cum = frontier_scores.unsqueeze(1) + scores;
    cand_ids.push_back(ids.flatten());
    cand_scores.push_back(cum.flatten());
    for (int64_t r = 0; r < f; ++r) {
      int64_t parent = frontier[r].item<int64_t>();
      for (int64_t c = 0; c < w; ++c) parents.push_back(parent), depths.push_back(level + 1);
    }
    at::Tensor best = std::get<1>(cum.flatten().topk(w));
    if (grows) {  // the tip's first choice extends the path, and stays in the frontier while it must grow
      int64_t child = position(spine.back()) * w;
      spine.push_back(n_cand + child);
      if (static_cast<int64_t>(spine.size()) < spine_depth && !(best == child).any().item<bool>())
        best = at::cat({best.narrow(0, 0, w - 1), at::full({1}, child, at::kLong)});
    }
    at::Tensor rows = at::floor_divide(best, w);
    frontier = best + n_cand;
    frontier_scores = cum.flatten().index_select(0, best);
    if (costs) {
      at::Tensor level_values = (frontier_values.unsqueeze(1) + log_rate(*costs, scores)).flatten();
      std::vector<double> more = doubles(level_values);
      values.insert(values.end(), more.begin(), more.end());
      frontier_values = level_values.index_select(0, best);
    }
    frontier_hidden = hidden[0].index_select(0, rows);
    visible = visible.index_select(0, rows);
    n_cand += f * w;
    level_rows.push_back(f);
  }
  // _select: the spine, then the budget best by (-score, depth, index) (with costs: by value, those that pay for their rows);
  // ancestors rank before descendants.
  std::vector<double> sc = doubles(at::cat(cand_scores));
  std::vector<int64_t> order = ranked(costs ? values : sc, depths, spine);
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(req.budget) - spine.size()));
  if (costs) {
    order.resize(static_cast<size_t>(value_prefix(values, order, *costs, level_rows, spine).kept));
    order.insert(order.begin(), spine.begin(), spine.end());
  }
  DraftTree tree;
  tree.level_rows = level_rows;
  if (order.empty()) return tree;
  std::sort(order.begin(), order.end());
  std::unordered_map<int64_t, int64_t> new_index;
  for (size_t i = 0; i < order.size(); ++i) new_index[order[i]] = static_cast<int64_t>(i);
  at::Tensor draft_ids = at::cat(cand_ids).index_select(0, at::tensor(order, at::kLong));
  at::Tensor tokens = id_map.index_select(0, draft_ids).contiguous();
  tree.tokens.assign(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
  for (int64_t i : order) {
    auto it = new_index.find(parents[i]);
    tree.parents.push_back(it == new_index.end() ? -1 : it->second);
    tree.depths.push_back(depths[i]);
    tree.scores.push_back(sc[i]);
  }
  return tree;
}

}  // namespace evospec::detail
