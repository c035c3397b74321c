// The Drafter facade: a bundle's weights, the resident head rows, the KV cache and the policy,
// driven in the order the Python decoding loop drives them (runtime/generator.py):
// observe the committed tokens -> choose the active set -> feed the new positions -> draft a tree.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <filesystem>

#include "bundle.hpp"
#include "evospec/drafter.hpp"
#include "gather.hpp"
#include "model.hpp"
#include "policy.hpp"
#include "safetensors.hpp"
#include "tree.hpp"

namespace evospec {

namespace fs = std::filesystem;
using namespace detail;

struct Drafter::Impl {
  std::string bundle;
  DrafterOptions options;
  DrafterInfo info;
  std::unique_ptr<Model> model;
  std::vector<int64_t> buckets;
  GatherPlan plan;
  at::Tensor id_map;  // [plan.size] head column -> target id
  std::unique_ptr<ResidentRows> rows;
  std::unique_ptr<SemanticIndex> semantic;
  std::unique_ptr<Policy> policy;
  int64_t moved = 0;
  // ms of the last propose in the vocabulary policy (observing, choosing the set) and in the plan (moving rows in),
  // so the caller's step breakdown can show them apart from the drafter's forwards
  double policy_ms = 0, plan_ms = 0;
  // Python's CompiledDrafter.lay_out_next: a policy's first set is laid out afresh in its own order (its core in
  // the leading columns, where PackedHead packs what stays put), not moved into the drafter's own vocabulary's
  // columns
  bool lay_out = false;
  // one sequence's state
  at::Tensor keys, values;  // [1, Hkv, capacity, hd]
  int64_t length = 0;       // committed cache slots
  std::vector<int64_t> prompt, pending;  // tokens not yet paired with a position
  bool started = false, first = true;
  at::Tensor root_normed;  // head inputs of the last cycle's first call

  // CompiledDrafter.__call__ (the torch resident-head path), op for op.
  std::pair<at::Tensor, at::Tensor> forward(at::Tensor hidden, const at::Tensor& target_ids, const at::Tensor& positions,
                                            int64_t start, at::Tensor mask) {
    const ModelConfig& c = model->config();
    hidden = hidden.to(at::kFloat);
    bool features_in = hidden.size(-1) == 3 * c.target_hidden_size;
    if (features_in) hidden = model->fuse(hidden);
    at::Tensor embeds = model->embed(target_ids);
    int64_t b = target_ids.size(0), t = target_ids.size(1);
    at::Tensor past_keys, past_values;
    if (start == 0) {  // the stages take a non-empty past: one dummy slot that the mask hides
      past_keys = past_values = at::zeros({b, c.num_kv_heads, 1, c.head_dim}, at::kFloat);
      mask = at::cat({at::zeros({t, 1}, at::kBool), mask}, 1);
    } else {
      past_keys = keys.narrow(2, 0, start);
      past_values = values.narrow(2, 0, start);
    }
    TrunkOut out = model->trunk(hidden, embeds, positions, past_keys, past_values, mask);
    keys.narrow(2, start, t).copy_(out.new_keys);
    values.narrow(2, start, t).copy_(out.new_values);
    at::Tensor normed = out.normed.reshape({b * t, c.hidden_size});
    if (features_in) {  // the cycle's first call: its last row sits at the newest committed token
      root_normed = normed.clone();
      if (policy && policy->routed()) {  // between trunk and head
        auto t0 = std::chrono::steady_clock::now();
        std::vector<int64_t> active = policy->route(root_normed[-1]);
        policy_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (policy->route_kept()) moved = 0;  // the set before, unchanged: no plan update
        else set_active(active);
      }
    }
    at::Tensor logits = rows->logits(normed);
    return {out.hidden, logits.narrow(1, 0, plan.size).reshape({b, t, plan.size})};
  }

  void set_active(const std::vector<int64_t>& active) {
    auto t0 = std::chrono::steady_clock::now();
    struct Clock {
      double& ms;
      std::chrono::steady_clock::time_point t0;
      ~Clock() { ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); }
    } clock{plan_ms, t0};
    GatherPlan next;
    if (lay_out) {
      next = make_plan(active, buckets);
      moved = next.size;
      lay_out = false;
    } else {
      next = update_plan(plan, active, buckets, moved);
    }
    if (next.ids == plan.ids && next.size == plan.size) return;
    rows->follow(next);
    plan = std::move(next);
    id_map = at::tensor(std::vector<int64_t>(plan.ids.begin(), plan.ids.begin() + plan.size), at::kLong);
  }
};


Drafter::Drafter(const std::string& bundle, const DrafterOptions& options) : impl_(std::make_unique<Impl>()) {
  c10::InferenceMode guard;
  if (options.threads < 0) throw SettingsError("DrafterOptions::threads must be >= 0 (0: libtorch's choice)");
  if (options.threads > 0) at::set_num_threads(options.threads);
  Impl& d = *impl_;
  d.bundle = normalise_path(bundle);
  d.options = options;
  json::Value manifest = read_manifest(bundle);
  if (options.check_files) check_files(bundle, manifest);
  d.info.backend = manifest.at("backend").as_string();
  if (d.info.backend != "torch" || !manifest.at("artefacts").has("reservoir"))
    throw BundleError(d.bundle + " was built for backend '" + d.info.backend + "'; the C++ drafter reads torch bundles "
                      "(their reservoir.safetensors): compile with --backend torch");
  d.model = std::make_unique<Model>(d.bundle + "/" + manifest.at("artefacts").at("drafter").as_string(), options.target_dir);
  const ModelConfig& c = d.model->config();
  d.info.hidden_size = c.hidden_size;
  d.info.target_hidden_size = c.target_hidden_size;
  d.info.vocab_size = c.vocab_size;
  for (const auto& b : manifest.at("gather").at("buckets").array) d.buckets.push_back(b.as_int());
  std::string reservoir_path = d.bundle + "/" + manifest.at("artefacts").at("reservoir").as_string();
  at::Tensor reservoir;
  try {
    reservoir = load_safetensors(reservoir_path).at("reservoir").to(at::kFloat).contiguous();
  } catch (const std::exception& e) {
    throw BundleError(reservoir_path + " is not a readable reservoir (" + e.what() + ")");
  }
  // the drafter's own vocabulary first, as Python's CompiledDrafter starts
  at::Tensor own = at::arange(c.draft_vocab_size, at::kLong) + d.model->d2t();
  std::vector<int64_t> own_ids(own.data_ptr<int64_t>(), own.data_ptr<int64_t>() + own.numel());
  d.plan = make_plan(own_ids, d.buckets);
  d.id_map = at::tensor(own_ids, at::kLong);
  d.rows = std::make_unique<ResidentRows>(reservoir, d.plan);
  d.info.policy = options.vocab.empty() ? "eagle3 (fixed)" : options.vocab;
  if (!options.vocab.empty()) {
    d.policy = make_policy(options.vocab,
                           {d.bundle, options.frequencies, options.router, options.evospec, c.vocab_size, c.hidden_size,
                            own_ids, d.semantic},
                           manifest);
    d.lay_out = true;
  }
  d.keys = at::zeros({1, c.num_kv_heads, options.max_context, c.head_dim}, at::kFloat);
  d.values = at::zeros_like(d.keys);
}

Drafter::~Drafter() = default;
Drafter::Drafter(Drafter&&) noexcept = default;
Drafter& Drafter::operator=(Drafter&&) noexcept = default;

void Drafter::start(const std::vector<int64_t>& prompt, bool greedy) {
  if (prompt.empty()) throw SettingsError("the prompt is empty: speculative decoding needs at least one prompt token");
  for (int64_t t : prompt)
    if (t < 0 || t >= impl_->info.vocab_size)
      throw SettingsError("prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                          std::to_string(impl_->info.vocab_size) + ")");
  c10::InferenceMode guard;
  Impl& d = *impl_;
  d.length = 0;
  d.prompt = prompt;
  d.pending.clear();
  d.started = true;
  d.first = true;
  d.root_normed = at::Tensor();
  if (d.policy) {
    d.policy->decoding(greedy);
    d.policy->reset(prompt);
  }
}

void Drafter::commit(const std::vector<int64_t>& accepted) {
  if (!impl_->started || impl_->first) throw SettingsError("commit() comes after propose(): start() and propose() first");
  for (int64_t t : accepted)
    if (t < 0 || t >= impl_->info.vocab_size)
      throw SettingsError("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                          std::to_string(impl_->info.vocab_size) + ")");
  impl_->pending.insert(impl_->pending.end(), accepted.begin(), accepted.end());
}

void check_sibling_ratio(double ratio) {
  if (!(ratio == 0 || (ratio > 1 && std::isfinite(ratio))))
    throw SettingsError("the draft sibling ratio must be 0 (every level's second choice) or > 1, got " +
                        std::to_string(ratio));
}

DraftTree Drafter::propose(const float* features, int64_t positions, int64_t newest_token, const DraftSettings& s) {
  Impl& d = *impl_;
  if (!d.started) throw SettingsError("propose() before start(): begin a sequence with its prompt");
  if (s.depth < 1 || s.width < 1 || s.budget < 1)
    throw SettingsError("draft depth, width and budget must be >= 1");
  if (s.costs != nullptr && !s.costs->rates.empty() && s.costs->rates.size() != static_cast<size_t>(StepCosts::kEdgeBins + 1) &&
      s.costs->rates.size() != static_cast<size_t>(2 * (StepCosts::kEdgeBins + 1)))
    throw SettingsError("StepCosts::rates holds one rate per edge bin (" + std::to_string(StepCosts::kEdgeBins + 1) +
                        "), got " + std::to_string(s.costs->rates.size()));
  if (features == nullptr || positions < 1)
    throw SettingsError("propose() needs the target's features of at least one new position");
  const bool sampled = s.temperature > 0 && s.width == 1;
  if (s.temperature < 0 || !std::isfinite(s.temperature)) throw SettingsError("draft temperature must be >= 0");
  if (s.siblings < 0 || s.siblings > s.depth)
    throw SettingsError("draft siblings must be between 0 and the depth (" + std::to_string(s.depth) + "), got " +
                        std::to_string(s.siblings));
  if (s.siblings > 0 && (s.width != 1 || s.temperature > 0))
    throw SettingsError("draft siblings are second choices beside a greedy chain (width 1, temperature 0)");
  check_sibling_ratio(s.sibling_ratio);
  if (s.siblings > 0 && s.costs != nullptr)
    throw SettingsError("a chain's siblings are drafted whole: a value-based budget (costs) does not price them");
  if (sampled && s.costs != nullptr)
    throw SettingsError("a sampled chain keeps every draw: a value-based budget (costs) is not applied to it");
  if (sampled) {
    if (s.uniforms == nullptr) throw SettingsError("a sampled chain needs DraftSettings::uniforms (depth of them)");
    for (int i = 0; i < s.depth; ++i)
      if (!(s.uniforms[i] >= 0.0 && s.uniforms[i] < 1.0))
        throw SettingsError("DraftSettings::uniforms must lie in [0, 1) (uniform " + std::to_string(i) + " is " +
                            std::to_string(s.uniforms[i]) + ")");
  }
  if (newest_token < 0 || newest_token >= d.info.vocab_size)
    throw SettingsError("token id " + std::to_string(newest_token) + " is outside the vocabulary [0, " +
                        std::to_string(d.info.vocab_size) + ")");
  c10::InferenceMode guard;
  const ModelConfig& c = d.model->config();
  // the tokens after each new position: prompt[1:] + [newest] first, then what commit() received + [newest]
  std::vector<int64_t> tokens = d.first ? std::vector<int64_t>(d.prompt.begin() + 1, d.prompt.end()) : d.pending;
  tokens.push_back(newest_token);
  if (positions != static_cast<int64_t>(tokens.size()))
    throw SettingsError("propose() got features for " + std::to_string(positions) + " positions, but " +
                        std::to_string(tokens.size()) + " were committed since the last call (" +
                        (d.first ? "the prompt" : "the accepted tokens and the newest token") + ")");
  if (d.length + positions + s.depth * s.width > d.options.max_context)
    throw SettingsError("the drafter's KV cache holds " + std::to_string(d.options.max_context) +
                        " slots (DrafterOptions::max_context); this step needs " +
                        std::to_string(d.length + positions + s.depth * s.width));
  d.policy_ms = d.plan_ms = 0;
  if (d.policy) {
    // the generator's order: observe what was committed (with the state the last cycle left), then choose
    auto p0 = std::chrono::steady_clock::now();
    std::vector<int64_t> committed = d.first ? std::vector<int64_t>{newest_token} : tokens;
    d.policy->observe(committed, d.first || !d.root_normed.defined() ? at::Tensor() : d.root_normed[-1]);
    std::vector<int64_t> active;
    if (!d.policy->routed()) active = d.policy->active_ids();
    d.policy_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p0).count();
    if (!d.policy->routed()) d.set_active(active);
  } else {
    d.moved = 0;
  }
  // timed as the Python loop times its draft (generator.py's _draft): the root call, then the tree past it
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor feats = at::from_blob(const_cast<float*>(features), {1, positions, 3 * c.target_hidden_size}, at::kFloat).clone();
  at::Tensor ids = at::tensor(tokens, at::kLong).unsqueeze(0);
  int64_t start = d.length, t = positions;
  at::Tensor mask = at::ones({t, start + t}, at::kBool).tril(start);
  at::Tensor pos = at::arange(start, start + t, at::kLong).unsqueeze(0);
  auto [hidden, logits] = d.forward(feats, ids, pos, start, mask);
  d.length += t;
  d.pending.clear();
  d.first = false;
  TreeRequest req;
  req.hidden = hidden[0].narrow(0, t - 1, 1);
  req.logits = logits[0][t - 1];
  req.committed = d.length;
  req.width = s.width;
  req.depth = s.depth;
  req.budget = s.budget;
  req.costs = s.costs;
  req.siblings = s.siblings;
  req.sibling_ratio = s.sibling_ratio;
  if (sampled) req.temperature = s.temperature, req.uniforms = s.uniforms;
  Forward fwd = [&d](const at::Tensor& h, const at::Tensor& i, const at::Tensor& p, int64_t st, const at::Tensor& m) {
    return d.forward(h, i, p, st, m);
  };
  auto t1 = std::chrono::steady_clock::now();
  DraftTree tree = draft_tree(fwd, d.id_map, d.options.max_context, req);
  auto t2 = std::chrono::steady_clock::now();
  tree.root_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  tree.tree_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  // the caller verifies next: a pipelined policy's job runs meanwhile (after drafting, not beside it)
  if (d.policy) {
    auto p0 = std::chrono::steady_clock::now();
    d.policy->start_pending();
    d.policy_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p0).count();
  }
  return tree;
}

std::vector<int64_t> Drafter::active_ids() const {
  const GatherPlan& p = impl_->plan;
  return std::vector<int64_t>(p.ids.begin(), p.ids.begin() + p.size);
}

int64_t Drafter::moved_rows() const { return impl_->moved; }

std::pair<double, double> Drafter::policy_ms() const { return {impl_->policy_ms, impl_->plan_ms}; }

void Drafter::update_rows(const std::vector<int64_t>& ids, const float* rows) {
  c10::InferenceMode guard;
  Impl& d = *impl_;
  int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t id : ids)
    if (id < 0 || id >= d.info.vocab_size) throw SettingsError("row id " + std::to_string(id) + " is outside the reservoir");
  at::Tensor values = at::from_blob(const_cast<float*>(rows), {n, d.info.hidden_size}, at::kFloat).clone();
  d.rows->reservoir().index_copy_(0, at::tensor(ids, at::kLong), values);
  d.rows->refresh(ids);
}

std::vector<float> Drafter::row(int64_t id) const {
  at::Tensor r = impl_->rows->reservoir()[id].contiguous();
  return std::vector<float>(r.data_ptr<float>(), r.data_ptr<float>() + r.numel());
}

void Drafter::update_weight(const std::string& name, const float* values, size_t count) {
  c10::InferenceMode guard;
  at::Tensor* weight = impl_->model->weight(name);
  if (weight == nullptr)
    throw SettingsError("no fuse/trunk weight named '" + name + "' (names as CompiledDrafter.trunk_weights(): "
                        "fc.weight, norm.weight, layer.self_attn.q_proj.weight, ...)");
  if (static_cast<int64_t>(count) != weight->numel())
    throw SettingsError("weight '" + name + "' has " + std::to_string(weight->numel()) + " elements, got " +
                        std::to_string(count));
  weight->copy_(at::from_blob(const_cast<float*>(values), weight->sizes(), at::kFloat));  // in place, as Python copies
}

const DrafterInfo& Drafter::info() const { return impl_->info; }

}  // namespace evospec
