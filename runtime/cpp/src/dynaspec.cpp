// DynaSpec's routed shortlist (runtime/vocab/dynaspec.py: Router, Shortlister, DynaSpecPolicy).
//
// The router (an MLP, or linear, on the drafter's head input at the root) scores C token clusters
// once per cycle, between the trunk and the head of the cycle's first call; the set is the
// backbone (the most frequent tokens) then clusters in router order, cut at exactly K. EvoSpec's
// fill ranks the same router's clusters for greedy sequences (``fill_source``; mass_fill.cpp).
#include <cmath>
#include <numeric>

#include "evospec/drafter.hpp"
#include "json.hpp"
#include "policy.hpp"
#include "safetensors.hpp"

namespace evospec::detail {

namespace {

constexpr const char* ROUTER_FORMAT = "evospec-dynaspec/2";
constexpr double DEFAULT_BACKBONE = 0.5;

std::vector<int64_t> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

class DynaSpecPolicy : public Policy {
 public:
  DynaSpecPolicy(int64_t k, int64_t clusters, std::shared_ptr<const Router> router, int64_t vocab_size)
      : k_(k), router_(std::move(router)) {
    if (router_->clusters() != clusters)
      throw SettingsError("dynaspec:" + std::to_string(k) + ":" + std::to_string(clusters) + ": the router file has " +
                          std::to_string(router_->clusters()) + " clusters");
    if (k < 1 || k > vocab_size)
      throw SettingsError("dynaspec:K needs 1 <= K <= " + std::to_string(vocab_size) + " (got " + std::to_string(k) + ")");
    labels_ = to_vector(router_->token_clusters());
    // Shortlister: frequency order (ties by id), backbone, then the rest grouped by cluster
    at::Tensor by_freq_t = std::get<1>(at::sort(-router_->counts().to(at::kFloat), /*stable=*/true, 0, false));
    std::vector<int64_t> by_freq = to_vector(by_freq_t);
    double share = router_->backbone_share(k);
    backbone_size_ = std::min<int64_t>(k, static_cast<int64_t>(std::nearbyint(share * k)));  // Python's round: half to even
    backbone_.assign(by_freq.begin(), by_freq.begin() + backbone_size_);
    std::vector<int64_t> rest(by_freq.begin() + backbone_size_, by_freq.end());
    std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return labels_[a] < labels_[b]; });
    members_.assign(clusters, {});
    for (int64_t id : rest) members_[labels_[id]].push_back(id);
    prior_.assign(by_freq.begin(), by_freq.begin() + k);
    reset({});
  }

  bool routed() const override { return true; }
  void reset(const std::vector<int64_t>&) override { active_ = prior_, used_.clear(), routed_once_ = false; }
  std::vector<int64_t> active_ids() override { return active_; }
  void observe(const std::vector<int64_t>&, const at::Tensor&) override {}

  std::vector<int64_t> route(const at::Tensor& state) override {
    std::vector<int64_t> order = to_vector(at::argsort(router_->scores(state), /*stable=*/true, 0, /*descending=*/true));
    std::vector<int64_t> ids = backbone_, used;
    for (int64_t c : order) {
      if (static_cast<int64_t>(ids.size()) >= k_) break;
      const auto& m = members_[c];
      size_t take = std::min<size_t>(m.size(), static_cast<size_t>(k_ - static_cast<int64_t>(ids.size())));
      if (take) {
        ids.insert(ids.end(), m.begin(), m.begin() + take);
        used.push_back(c);
      }
    }
    if (!routed_once_ || used != used_) active_ = ids, used_ = used, routed_once_ = true;
    return active_;
  }

 private:
  int64_t k_, backbone_size_ = 0;
  std::vector<int64_t> labels_, backbone_, prior_, active_, used_;
  std::vector<std::vector<int64_t>> members_;
  std::shared_ptr<const Router> router_;
  bool routed_once_ = false;
};

}  // namespace

Router::Router(const std::string& path, int64_t vocab_size) {
  std::map<std::string, std::string> meta;
  std::map<std::string, at::Tensor> t;
  try {
    t = load_safetensors(path, &meta);
  } catch (const std::exception& e) {
    throw SettingsError(path + " is not a readable router file (" + e.what() + ")");
  }
  if (meta["format"] != ROUTER_FORMAT) throw SettingsError(path + " is not an evospec DynaSpec router");
  for (const char* name : {"labels", "w1", "b1", "w2", "b2", "counts"})
    if (!t.count(name)) throw SettingsError(path + ": router file lacks tensors " + name);
  labels_ = t["labels"].to(at::kLong).contiguous(), counts_ = t["counts"];
  w1_ = t["w1"].to(at::kFloat), b1_ = t["b1"].to(at::kFloat), w2_ = t["w2"].to(at::kFloat), b2_ = t["b2"].to(at::kFloat);
  bool linear = w1_.numel() == 0;
  int64_t c = w2_.dim() == 2 ? w2_.size(0) : -1;
  if (labels_.dim() != 1 || counts_.dim() != 1 || counts_.size(0) != labels_.size(0) || c < 1 || b2_.numel() != c ||
      (!linear && (w1_.dim() != 2 || b1_.numel() != w1_.size(0) || w2_.size(1) != w1_.size(0))))
    throw SettingsError(path + ": inconsistent router file: its layer shapes do not chain");
  if (labels_.numel() && (labels_.min().item<int64_t>() < 0 || labels_.max().item<int64_t>() >= c))
    throw SettingsError(path + ": inconsistent router file: cluster labels outside [0, " + std::to_string(c) + ")");
  if (labels_.size(0) != vocab_size)
    throw SettingsError("the router covers " + std::to_string(labels_.size(0)) + " tokens but the model has " +
                        std::to_string(vocab_size));
  if (meta.count("backbone_shares"))
    for (const auto& [size, value] : json::parse(meta["backbone_shares"]).object)
      shares_.emplace_back(std::stod(size), value.as_double());
}

at::Tensor Router::scores(const at::Tensor& state) const {
  at::Tensor x = state.detach().reshape({-1}).to(at::kFloat).cpu();
  int64_t size_in = (w1_.numel() ? w1_ : w2_).size(1);
  if (x.numel() != size_in)
    throw SettingsError("the router reads states of " + std::to_string(size_in) + " values, the drafter gives " +
                        std::to_string(x.numel()) + " (a router trained for another drafter)");
  if (w1_.numel()) x = at::gelu(at::matmul(x, w1_.t()) + b1_);
  return at::matmul(x, w2_.t()) + b2_;
}

double Router::backbone_share(int64_t k) const {
  // Router.backbone_share: the validated share of the stored size nearest to k on a log scale
  double share = DEFAULT_BACKBONE, best = INFINITY;
  for (const auto& [size, value] : shares_) {
    double distance = std::abs(std::log(size) - std::log(static_cast<double>(k)));
    if (distance < best) best = distance, share = value;
  }
  return share;
}

std::unique_ptr<Policy> make_dynaspec_policy(int64_t k, int64_t clusters, std::shared_ptr<const Router> router,
                                            int64_t vocab_size) {
  return std::make_unique<DynaSpecPolicy>(k, clusters, std::move(router), vocab_size);
}

}  // namespace evospec::detail
