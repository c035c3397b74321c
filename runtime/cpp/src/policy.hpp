// Vocabulary policies (runtime/vocab/): which target ids the head scores next step.
//
// Mirrors of the Python policies, so a C++ service gets the same active set at every step:
// static ones (full, eagle3, frspec:K), EvoSpec's living vocabulary (evospec_policy.cpp) and the
// one-cycle-ahead schedule of Python's PipelinedPolicy (the deterministic lag; its job on a thread of its own
// while the caller runs the target's pass, as Python's worker runs it).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "evospec/drafter.hpp"
#include "job_thread.hpp"
#include "json.hpp"

namespace evospec::detail {

class Policy {
 public:
  virtual ~Policy() = default;
  virtual void reset(const std::vector<int64_t>& prompt) = 0;
  virtual std::vector<int64_t> active_ids() = 0;
  // ``state``: the drafter's head input at the newest committed token before ``committed``, or undefined.
  virtual void observe(const std::vector<int64_t>& committed, const at::Tensor& state) = 0;
  // The set the drafter actually served this cycle (pipelined callers; see EvoSpecPolicy).
  virtual void served(const std::vector<int64_t>&) {}
  // Routed policies (DynaSpec) choose the set from the fresh root state, between the trunk and the
  // head of a cycle's first call, instead of through active_ids() before it.
  virtual bool routed() const { return false; }
  virtual std::vector<int64_t> route(const at::Tensor&) { return active_ids(); }
  // Whether the last route() handed back the set before it without choosing (a refresh gate): the caller's plan
  // update is then skipped.
  virtual bool route_kept() const { return false; }
  // Python's ``MassRouted.decoding``: the next sequence decodes greedily or samples (a fill may differ by kind);
  // called before ``reset``.
  virtual void decoding(bool /*greedy*/) {}
  // Python's ``patches_fresh`` / ``fresh``: the evidence ``committed`` gives without the policy's
  // state, which a pipelining caller puts in the (older) set it serves; ``tail_size``: how many
  // entries at the end of a set it may replace.
  virtual bool patches_fresh() const { return false; }
  // Python's ``fill_start`` / ``kept_ids``: where the last set active_ids() handed out ends its evidence
  // (-1: it has no frequency fill), and that set without its fill (a mass-routed policy keeps these).
  virtual int64_t fill_start() const { return -1; }
  virtual std::vector<int64_t> kept_ids() { return active_ids(); }
  virtual std::vector<int64_t> fresh(const std::vector<int64_t>&) const { return {}; }
  virtual int64_t tail_size() const { return 0; }
  virtual int64_t core_size() const { return 0; }  // the frequency core at the head of every set
  // Where the caller spends a while outside the drafter (its target's pass): a pipelined policy starts the
  // newest observation's job here (Python's PipelinedPolicy.start_pending).
  virtual void start_pending() {}
};

// A mask over 0..max(ids) marking ``ids`` (Python's ``pipelined.membership``): testing a few ids against a K-id set
// is then an index, not a hash lookup.
inline std::vector<uint8_t> membership(const std::vector<int64_t>& ids) {
  int64_t top = 0;
  for (int64_t id : ids) top = std::max(top, id);
  std::vector<uint8_t> in(static_cast<size_t>(top) + 1, 0);
  for (int64_t id : ids) in[id] = 1;
  return in;
}

class StaticPolicy : public Policy {
 public:
  explicit StaticPolicy(std::vector<int64_t> ids) : ids_(std::move(ids)) {}
  void reset(const std::vector<int64_t>&) override {}
  std::vector<int64_t> active_ids() override { return ids_; }
  void observe(const std::vector<int64_t>&, const at::Tensor&) override {}

 private:
  std::vector<int64_t> ids_;
};

// A token-frequency file (``evospec vocab frequencies``; runtime/vocab/frequencies.py).
struct TokenFrequencies {
  int64_t vocab_size = 0;
  std::vector<int64_t> counts;
  bool has_successors = false;
  std::unordered_map<int64_t, std::vector<int64_t>> successors;

  static TokenFrequencies load(const std::string& path);  // SettingsError with Python's messages
  std::vector<int64_t> ranked(int64_t k, int64_t vocab) const;  // most frequent first; ties: lower id
  std::vector<int64_t> top(int64_t k, int64_t vocab) const;     // ranked(k), sorted by id
};

// The semantic index (runtime/vocab/semantic.py): ids of the rows nearest a drafter state.
class SemanticIndex {
 public:
  virtual ~SemanticIndex() = default;
  virtual std::vector<int64_t> query(const at::Tensor& state, int64_t count) const = 0;
};

// The bundle's index (index/semantic.usearch + index/projection.safetensors), or nullptr when the
// library was built without USearch's headers. Throws BundleError for missing or corrupt files.
std::unique_ptr<SemanticIndex> load_semantic_index(const std::string& bundle, int64_t vocab_size, int64_t hidden_size);
bool semantic_index_available();

// Python's PipelinedPolicy: the set served at cycle t was computed from the observation of
// cycle t-2 (patched with cycle t-1's fresh evidence when the inner policy asks), and the inner
// policy is told which set was served when it observes.
//
// The inner policy's job for an observation (served, observe, active_ids) runs on a thread of its own,
// started at ``start_pending`` (the drafter calls it as propose() returns, so the job overlaps the caller's
// target pass) and joined when its set is due. Only that thread touches the inner policy's state while a
// job runs; the caller's side reads what the inner policy never changes (``fresh``, sizes). The sets are the
// ones computing the job inline would give: the lag is fixed, not timed.
class PipelinedPolicy : public Policy {
 public:
  explicit PipelinedPolicy(std::unique_ptr<Policy> inner) : inner_(std::move(inner)) {}
  ~PipelinedPolicy() override { drain(); }
  void reset(const std::vector<int64_t>& prompt) override;
  std::vector<int64_t> active_ids() override;
  void observe(const std::vector<int64_t>& committed, const at::Tensor& state) override;
  void start_pending() override;
  void served(const std::vector<int64_t>& active) override { served_ = active; }  // a wrapper changed the set
  void decoding(bool greedy) override {  // after the worker's last job: it reads the kind
    drain();
    inner_->decoding(greedy);
  }
  std::vector<int64_t> kept_ids() override;
  int64_t tail_size() const override { return inner_->tail_size(); }
  int64_t core_size() const override { return inner_->core_size(); }

 private:
  using Computed = std::pair<std::vector<int64_t>, int64_t>;  // a set and its fill_start
  struct Job {
    std::vector<int64_t> committed;
    at::Tensor state;  // a copy: the drafter writes its next state while the job runs
    std::vector<int64_t> served;
  };
  void drain();  // wait for every started job; the pending one is dropped

  std::unique_ptr<Policy> inner_;
  std::optional<Job> pending_;              // the newest observation's job, not started
  std::deque<std::future<Computed>> queue_;  // started jobs, oldest first
  std::vector<int64_t> current_;              // the newest set due
  int64_t fill_start_ = -1;                   // current_'s fill_start
  size_t added_ = 0;                          // fresh ids patched in at the end of served_
  int64_t evidence_end_ = 0;                  // where served_'s kept entries end (the patch may drop some before it)
  std::vector<int64_t> served_;               // the set handed out this cycle (patched, or current_)
  std::vector<int64_t> fresh_;                // the last observation's fresh evidence
  JobThread<Computed> worker_;                // runs the jobs (declared last: joined before the rest goes)
};

// What a fill ranks: token clusters (``labels``: [V] int64 in [0, clusters)) and their scores for a root state.
// Python's fill reads the same three from the mass index or from a DynaSpec router (``RouterClusters``).
class ClusterIndex {
 public:
  virtual ~ClusterIndex() = default;
  virtual const at::Tensor& token_clusters() const = 0;
  virtual int64_t clusters() const = 0;
  virtual at::Tensor scores(const at::Tensor& state) const = 0;  // [C]
};

// The mass index (runtime/vocab/mass_index.py): k-means clusters of the reservoir rows and the
// estimate of the drafter's own mass in each, from index/mass.safetensors.
struct MassIndex : ClusterIndex {
  at::Tensor labels, means, log_sizes, spread;  // [V] int64, [C, d], [C], [C]
  at::Tensor means_t;  // [d, C]: the centres feature-major, for scores' one pass
  const at::Tensor& token_clusters() const override { return labels; }
  int64_t clusters() const override { return means.size(0); }
  at::Tensor scores(const at::Tensor& state) const override;  // [C]
};

// A DynaSpec router file (runtime/vocab/dynaspec.py's Router): clusters of the target's head rows and an MLP
// (or linear map) from the drafter's head input at the root to the clusters of the target's next tokens.
// SettingsError for a missing, corrupt or mismatched file (Python's messages).
class Router : public ClusterIndex {
 public:
  Router(const std::string& path, int64_t vocab_size);
  const at::Tensor& token_clusters() const override { return labels_; }
  int64_t clusters() const override { return w2_.size(0); }
  at::Tensor scores(const at::Tensor& state) const override;  // [C] the router's logits
  double backbone_share(int64_t k) const;  // the validated share for the stored size nearest to k (log scale)
  const at::Tensor& counts() const { return counts_; }

 private:
  at::Tensor labels_, w1_, b1_, w2_, b2_, counts_;
  std::vector<std::pair<double, double>> shares_;  // (size, share)
};

// The bundle's mass index; BundleError for a missing, corrupt or mismatched file.
std::shared_ptr<const MassIndex> load_mass_index(const std::string& bundle, int64_t vocab_size, int64_t hidden_size);

// Python's MassRouted over MassFill (runtime/vocab/mass_fill.py): ``inner``'s core and evidence, the rest of
// K filled with the rows of the clusters ``index`` ranks first for each cycle's root state (routed).
// ``greedy_index``: the clusters greedy sequences fill from, where they differ (``fill_source = "auto"`` with a
// router; ``decoding`` says which kind comes next).
std::unique_ptr<Policy> make_mass_routed(std::unique_ptr<Policy> inner, std::shared_ptr<const ClusterIndex> index,
                                         const std::vector<int64_t>& core, const std::vector<int64_t>& by_frequency,
                                         int64_t k, double sticky = 0.0,
                                         std::shared_ptr<const ClusterIndex> greedy_index = nullptr);

using EvoSpecSettings = evospec::EvoSpecPolicySettings;  // public: DrafterOptions::evospec

// Python's RefreshGate (refresh_gate.cpp): ``inner`` (routed) re-routes greedy sequences only after a miss or every
// ``gap`` cycles, keeping a set once ``hold`` cycles in a row had no miss; ``gap`` 1 returns ``inner`` itself.
std::unique_ptr<Policy> make_refresh_gate(std::unique_ptr<Policy> inner, int64_t gap, int64_t hold);

// ``settings`` with the built-in variant ``name`` applied (SettingsError for an unknown one).
EvoSpecSettings evospec_variant(const EvoSpecSettings& settings, const std::string& name);

// ``frequency_fill = false``: sets hold the core and the evidence only, for make_mass_routed to fill.
std::unique_ptr<Policy> make_evospec_policy(int64_t k, const TokenFrequencies& frequencies, int64_t vocab_size,
                                            const EvoSpecSettings& settings, const SemanticIndex* semantic,
                                            bool frequency_fill = true);

// DynaSpec (``dynaspec:K:C``) from a router file (``evospec vocab dynaspec``).
std::unique_ptr<Policy> make_dynaspec_policy(int64_t k, int64_t clusters, std::shared_ptr<const Router> router,
                                            int64_t vocab_size);

// What a policy is built from (runtime/vocab/__init__.py's make_policy and PolicyInputs).
struct PolicyInputs {
  std::string bundle, frequencies, router;
  EvoSpecSettings evospec;
  int64_t vocab_size, hidden_size;
  std::vector<int64_t> own_ids;               // the drafter's own vocabulary (policy eagle3)
  std::unique_ptr<SemanticIndex>& semantic;  // loaded here when the policy retrieves by state
};

// The policy ``spec`` names (full, eagle3, frspec:K, evospec:K[:sync|:VARIANT], dynaspec:K:C) over a bundle whose
// manifest is ``manifest``; SettingsError / BundleError with Python's messages.
std::unique_ptr<Policy> make_policy(const std::string& spec, PolicyInputs d, const json::Value& manifest);

}  // namespace evospec::detail
