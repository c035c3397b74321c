// EvoSpec's tail fill by mass (runtime/vocab/mass_index.py, runtime/vocab/mass_fill.py): the set keeps
// the wrapped policy's core and evidence, and the rest of K goes to the rows of the clusters the mass
// index ranks first for the cycle's root state, most frequent first inside a cluster. The same ATen
// ops as Python's (scores, a descending argsort), so both runtimes serve the same sets. A DynaSpec
// router's clusters can stand in for the mass index's (``fill_source``: for greedy sequences by default).
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "evospec/drafter.hpp"
#include "policy.hpp"
#include "row_kernels_x86.hpp"
#include "safetensors.hpp"

namespace evospec::detail {

namespace fs = std::filesystem;

at::Tensor MassIndex::scores(const at::Tensor& state) const {
  at::Tensor h = state.detach().reshape({-1}).to(at::kFloat).cpu().contiguous();
  // C dot products of width d in one pass over the centres stored feature-major ([d, C]: the inner loop runs
  // along the clusters and vectorises), not four ATen ops: this runs on the decoding thread between the trunk
  // and the head, where each op's dispatch (and a BLAS call's thread team) cost more than the 0.3 MFLOP itself
  const int64_t c = means_t.size(1), d = means_t.size(0);
  const float* x = h.data_ptr<float>();
  const float* m = means_t.data_ptr<float>();
  const float* sizes = log_sizes.data_ptr<float>();
  const float* spreads = spread.data_ptr<float>();
  float norm = 0.0f;
  for (int64_t j = 0; j < d; ++j) norm += x[j] * x[j];
  at::Tensor out = at::zeros({c}, at::kFloat);
  float* score = out.data_ptr<float>();
#ifdef EVOSPEC_X86_KERNELS
  if (x86::isa() == x86::Isa::avx512) {
    x86::column_dots_avx512(m, x, d, c, score);  // the same operations per score, 16 clusters a lane
  } else
#endif
  {
    for (int64_t j = 0; j < d; ++j) {
      const float* column = m + j * c;
      const float xj = x[j];
      for (int64_t i = 0; i < c; ++i) score[i] += column[i] * xj;
    }
  }
  for (int64_t i = 0; i < c; ++i) score[i] = sizes[i] + score[i] + spreads[i] * norm;
  return out;
}

std::shared_ptr<const MassIndex> load_mass_index(const std::string& bundle, int64_t vocab_size, int64_t hidden_size) {
  std::string path = bundle + "/index/mass.safetensors";
  if (!fs::is_regular_file(path)) throw BundleError(path + " is missing; recompile the bundle with `evospec compile`");
  std::map<std::string, at::Tensor> t;
  try {
    t = load_safetensors(path);
  } catch (const std::exception& e) {
    throw BundleError(path + " is not a readable mass index (" + e.what() + ")");
  }
  for (const char* name : {"labels", "means", "log_sizes", "spread"})
    if (!t.count(name)) throw BundleError(path + " lacks " + name + "; recompile the bundle");
  auto index = std::make_shared<MassIndex>();
  index->labels = t.at("labels").to(at::kLong);
  index->means = t.at("means").to(at::kFloat).contiguous();
  index->means_t = index->means.t().contiguous();
  index->log_sizes = t.at("log_sizes").to(at::kFloat);
  index->spread = t.at("spread").to(at::kFloat);
  int64_t c = index->means.dim() == 2 ? index->means.size(0) : -1;
  if (index->labels.dim() != 1 || index->labels.size(0) != vocab_size || c < 1 || index->means.size(1) != hidden_size ||
      index->log_sizes.numel() != c || index->spread.numel() != c)
    throw BundleError(path + ": the mass index does not fit a reservoir of " + std::to_string(vocab_size) +
                      " rows of width " + std::to_string(hidden_size));
  if (index->labels.min().item<int64_t>() < 0 || index->labels.max().item<int64_t>() >= c)
    throw BundleError(path + ": cluster labels outside [0, " + std::to_string(c) + ")");
  return index;
}

namespace {

// Python's MassFill for one core and one cluster index: the rows outside the core, grouped by cluster (frequency
// order kept inside each), and the fill of a cycle's room from the clusters ranked first for its root state.
class MassFill {
 public:
  MassFill(std::shared_ptr<const ClusterIndex> index, const std::vector<int64_t>& core,
           const std::vector<int64_t>& by_frequency, double sticky)
      : index_(std::move(index)), sticky_(sticky), kept_(index_->token_clusters().size(0), false),
        chosen_(index_->clusters(), false) {
    std::vector<bool> in_core(kept_.size(), false);
    for (int64_t id : core) in_core[id] = true;
    at::Tensor labels = index_->token_clusters().to(at::kLong).contiguous();
    const int64_t* label = labels.data_ptr<int64_t>();
    std::vector<std::vector<int64_t>> groups(index_->clusters());
    for (int64_t id : by_frequency)
      if (!in_core[id]) groups[label[id]].push_back(id);
    offsets_.push_back(0);
    for (const auto& g : groups) {
      members_.insert(members_.end(), g.begin(), g.end());
      offsets_.push_back(static_cast<int64_t>(members_.size()));
    }
  }

  void forget() { std::fill(chosen_.begin(), chosen_.end(), false); }  // a new sequence: no cluster is sticky

  // ``active`` (the kept ids) grown by up to ``room`` ids outside it, from the clusters ranked first for ``state``.
  void fill(const at::Tensor& state, std::vector<int64_t>& active, int64_t room) {
    if (room <= 0) return;
    for (int64_t id : active) kept_[id] = true;
    std::vector<int64_t> keep = active;
    active.reserve(active.size() + static_cast<size_t>(room));
    at::Tensor scores = index_->scores(state).contiguous();
    // the rows the sticky band spans (the fill itself reads no further: ``ranked``)
    const int64_t band = static_cast<int64_t>((room + static_cast<int64_t>(keep.size())) * (1 + sticky_));
    std::vector<int64_t> order = ranked(scores.data_ptr<float>(), scores.numel(), band);
    if (sticky_ > 0)
      order = sticky_order(order, band);
    std::vector<int64_t> gave;  // the clusters the fill takes rows from (Python's MassFill._chosen)
    for (size_t i = 0; i < order.size() && room > 0; ++i) {
      int64_t c = order[i];
      for (int64_t j = offsets_[c]; j < offsets_[c + 1] && room > 0; ++j)
        if (!kept_[members_[j]]) {
          active.push_back(members_[j]), --room;
          if (gave.empty() || gave.back() != c) gave.push_back(c);
        }
    }
    for (int64_t id : keep) kept_[id] = false;
    if (sticky_ > 0) {
      std::fill(chosen_.begin(), chosen_.end(), false);
      for (int64_t c : gave) chosen_[c] = true;
    }
  }

 private:
  // Python's MassFill.ids with ``sticky``: last cycle's clusters that rank within the shortest prefix holding
  // ``band`` rows go first (in rank order), then the others in rank order.
  std::vector<int64_t> sticky_order(const std::vector<int64_t>& order, int64_t band) const {
    size_t end = 0;
    for (int64_t held = 0; end < order.size();) {
      held += offsets_[order[end] + 1] - offsets_[order[end]];
      ++end;
      if (held >= band) break;
    }
    std::vector<int64_t> first, rest;
    for (size_t i = 0; i < order.size(); ++i)
      (i < end && chosen_[order[i]] ? first : rest).push_back(order[i]);
    first.insert(first.end(), rest.begin(), rest.end());
    return first;
  }

  // The clusters by descending score, ties in index order (torch's stable argsort), sorted only as far as the fill
  // can read: the fill and the sticky band take clusters from the shortest prefix holding ``band`` rows, so once
  // the best few hold that many, the others need no order (a full sort of C scores: a tenth of a ms a step).
  // Sorted as one integer key per cluster (its score's order bits, then its index), not indices through a
  // comparator that reads the scores: the same order in a third of the time.
  std::vector<int64_t> ranked(const float* score, int64_t c, int64_t band) const {
    std::vector<uint64_t> keys(c);
    for (int64_t i = 0; i < c; ++i) keys[i] = (uint64_t{descending_bits(score[i])} << 32) | static_cast<uint64_t>(i);
    int64_t sorted = c;
    for (int64_t head = std::min<int64_t>(c, 256); head < c; head *= 4) {
      std::nth_element(keys.begin(), keys.begin() + head, keys.end());
      int64_t held = 0;
      for (int64_t i = 0; i < head; ++i) {
        const int64_t cluster = static_cast<int64_t>(keys[i] & 0xFFFFFFFFu);
        held += offsets_[cluster + 1] - offsets_[cluster];
      }
      if (held >= band) {
        sorted = head;
        break;
      }
    }
    std::sort(keys.begin(), keys.begin() + sorted);
    std::vector<int64_t> order(c);
    for (int64_t i = 0; i < c; ++i) order[i] = static_cast<int64_t>(keys[i] & 0xFFFFFFFFu);
    return order;
  }

  // A float's bits as an unsigned key that ascends as the float descends (-0 taken as +0, as == takes them).
  static uint32_t descending_bits(float value) {
    uint32_t bits;
    const float v = value + 0.0f;
    std::memcpy(&bits, &v, sizeof bits);
    const uint32_t ascending = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
    return ~ascending;
  }

  std::shared_ptr<const ClusterIndex> index_;
  double sticky_;
  std::vector<uint8_t> kept_, chosen_;  // bytes, not bits: the fill reads and writes ~25k of them a cycle
  std::vector<int64_t> members_, offsets_;
};

class MassRouted : public Policy {
 public:
  MassRouted(std::unique_ptr<Policy> inner, std::unique_ptr<MassFill> fill, std::unique_ptr<MassFill> greedy_fill,
             int64_t k)
      : inner_(std::move(inner)), sampled_(std::move(fill)), greedy_(std::move(greedy_fill)), fill_(sampled_.get()),
        k_(k) {}

  void decoding(bool greedy) override {
    fill_ = greedy && greedy_ ? greedy_.get() : sampled_.get();
    inner_->decoding(greedy);
  }
  void reset(const std::vector<int64_t>& prompt) override {
    fill_->forget();
    inner_->reset(prompt);
  }
  std::vector<int64_t> active_ids() override { return inner_->active_ids(); }
  void observe(const std::vector<int64_t>& committed, const at::Tensor& state) override {
    inner_->observe(committed, state);
  }
  bool routed() const override { return true; }
  void start_pending() override { inner_->start_pending(); }

  std::vector<int64_t> route(const at::Tensor& state) override {
    inner_->active_ids();  // collects the newest set (pipelined) and patches it
    std::vector<int64_t> active = inner_->kept_ids();
    fill_->fill(state, active, k_ - static_cast<int64_t>(active.size()));
    inner_->served(active);
    return active;
  }

 private:
  std::unique_ptr<Policy> inner_;
  std::unique_ptr<MassFill> sampled_, greedy_;
  MassFill* fill_;
  int64_t k_;
};

}  // namespace

std::unique_ptr<Policy> make_mass_routed(std::unique_ptr<Policy> inner, std::shared_ptr<const ClusterIndex> index,
                                         const std::vector<int64_t>& core, const std::vector<int64_t>& by_frequency,
                                         int64_t k, double sticky, std::shared_ptr<const ClusterIndex> greedy_index) {
  auto fill = std::make_unique<MassFill>(std::move(index), core, by_frequency, sticky);
  auto greedy = greedy_index ? std::make_unique<MassFill>(std::move(greedy_index), core, by_frequency, sticky) : nullptr;
  return std::make_unique<MassRouted>(std::move(inner), std::move(fill), std::move(greedy), k);
}

}  // namespace evospec::detail
