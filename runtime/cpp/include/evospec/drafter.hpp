// EvoSpec's drafter runtime for C++ services: open a compiled bundle, draft over a living
// vocabulary, and hand the draft tree to the service's own target and verifier.
//
// The interface is narrow on purpose (like TensorRT-LLM's Drafter or vLLM's proposers): a service
// owns its target model, its KV cache and its verification; it hands this library the target's
// tapped hidden states of newly committed positions and the tokens it committed, and gets a draft
// tree back. Everything here computes what the Python runtime (runtime/compiled_drafter.py,
// runtime/tree.py, runtime/vocab/) computes, token for token (tests/test_cpp.py checks it).
//
// This header needs only the C++17 standard library: the libtorch the implementation uses stays
// behind it, so a service compiles against it without torch's headers.
//
// One decoding sequence per Drafter; a Drafter is not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace evospec {

// A bundle that cannot be used: missing, not a bundle, another format, a missing, truncated or
// altered file, a corrupt index. what() is the one line the Python runtime's BundleError says.
class BundleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad settings or input: an unknown policy, a wrong feature width, an empty prompt.
class SettingsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What one step costs in ms, for a value-based budget (Python: runtime/tree.py's StepCosts, the rule of
// ``--draft-budget auto``): nodes are kept by their path's acceptance (the product of its edges' rates)
// while they pay for their rows, and a level is drafted only while the nodes it expands could pay.
struct StepCosts {
  static constexpr int kEdgeBins = 11;  // Python's EDGE_BINS: 0.02 0.05 0.1 0.2 ... 0.9
  double fixed_ms = 0;      // every step: the root call and verification of the root
  double level_ms = 0;      // one drafter expansion level, whatever its rows
  double row_ms = 0;        // one more verified row
  double level_row_ms = 0;  // one more frontier row in a drafter level
  // Acceptance rate of a drafted edge per bin of the drafter's probability: kEdgeBins + 1 values, or
  // twice that (a parent's first choice, then its other children); empty: the drafter's probability as it is.
  std::vector<double> rates;
  // Levels of the first-choice path drafted and kept whatever they are worth (0: none): not a cost, the
  // nodes the rule leaves alone. With the chain's depth the tree holds the chain (Python: StepCosts.spine).
  int64_t spine = 0;
};

// How a draft is shaped (Python: DecodeSettings' draft_tree/draft_depth/draft_topk/draft_tokens).
struct DraftSettings {
  int depth = 5;    // levels drafted per step
  int width = 8;    // children per node and frontier width; 1 = a chain
  int budget = 32;  // nodes kept (best cumulative log-probability); a chain keeps ``depth``
  // Not null: a value-based budget under these costs (``budget`` is then the most nodes kept).
  const StepCosts* costs = nullptr;
  // > 0 with width 1: a sampled chain (Python's sampled chain at this temperature): each level's token is drawn
  // from the drafter's q = softmax(logits / temperature) over the head's columns with one of ``uniforms``
  // (``depth`` numbers in [0, 1) from the caller's generator, so the draws are the caller's), and each node's q is
  // returned (DraftTree::laws) for the caller's verifier. Trees (width > 1) are drafted top-k at any temperature.
  double temperature = 0;
  const double* uniforms = nullptr;
  // A greedy chain (width 1, temperature 0): the drafter's second choice at each of the first ``siblings`` levels
  // joins the tree as a leaf after the chain's nodes (Python's DecodeSettings.draft_siblings). Those levels'
  // logits are computed for the chain, so a sibling costs the caller one more verified row and no drafter call.
  // Not priced: with ``costs`` too, propose() refuses.
  int siblings = 0;
  // > 0: of those levels, only the ones whose first choice is less than this many times as likely as the second
  // keep a sibling (Python's DecodeSettings.draft_sibling_ratio, the same test on the same float32 log-probabilities).
  double sibling_ratio = 0;

  static DraftSettings chain(int depth) { return {depth, 1, depth}; }
  static DraftSettings tree(int depth, int topk, int tokens) { return {depth, topk, tokens}; }
};

// Throws SettingsError unless ``ratio`` is a valid DraftSettings::sibling_ratio: 0, or finite and > 1.
void check_sibling_ratio(double ratio);

// Nodes in topological order; node i's parent is parents[i] (-1: the newest committed token).
struct DraftTree {
  std::vector<int64_t> tokens;   // target token ids
  std::vector<int64_t> parents;  // -1 or an earlier index
  std::vector<int64_t> depths;   // 1..depth
  std::vector<double> scores;    // cumulative draft log-probability of each node
  std::vector<int64_t> level_rows;  // frontier rows of each drafter call past the root call
  // A sampled chain (DraftSettings::temperature): node i's law q over the head's columns, row-major
  // [nodes, law_columns]; the first active_ids().size() columns are active_ids(), any others padding (q = 0).
  std::vector<double> laws;
  int64_t law_columns = 0;
  double root_ms = 0;  // propose's root call (the new positions; it proposes the first level)
  double tree_ms = 0;  // drafting past the root call: expansion levels and selection
};

// How ``evospec:K`` fills its K rows (runtime/vocab/evospec_settings.py's PolicySettings and
// DriftSettings); the defaults are the Python runtime's built-in (chosen) settings. A policy named
// ``evospec:K:VARIANT`` applies the built-in variant's override on top of these (core-25, core-75,
// frequency-only, no-context, no-corpus-successors, no-session-successors, no-semantic,
// semantic-256, age-64, no-drift, frequency-fill, no-sticky, router-fill, mass-fill, semantic-greedy, no-refresh-gate, hold-0, hold-16,
// refresh-4-hold-0; no-curriculum,
// align-retrieved-rows, rest-mass and renormalised-teacher change alignment only).
struct EvoSpecPolicySettings {
  double core_share = 0.5;          // share of K held by the most frequent corpus tokens
  bool context = true;              // stamp every prompt and committed token
  bool corpus_successors = true;    // stamp the newest token's corpus successors (statistical index)
  bool session_successors = true;   // stamp what followed the newest token earlier in this session
  int64_t semantic_count = 64;      // rows the semantic index adds per cycle (0: none)
  bool semantic_greedy = false;     // greedy sequences query the semantic index too (false: sampled ones only)
  int64_t max_age = 0;              // evidence older than this many steps leaves the tail (0: never)
  bool mass_fill = true;            // fill the tail's unused budget by the drafter's estimated mass (bundle's mass index)
  double mass_sticky = 0.25;        // the fill's hysteresis: last cycle's clusters stay within (1 + this) x the rows needed
  // whose clusters the fill ranks: "mass" (the bundle's mass index), "router" (the DynaSpec router of
  // DrafterOptions::router) or "auto" (the router for greedy sequences when a router is given, else mass)
  std::string fill_source = "auto";
  bool fresh = true;                // pipelined: patch the worker's set with the newest committed tokens and successors
  // a greedy sequence's routed set is chosen again only after a committed token outside it, or every this many
  // cycles (1: every cycle); sampled sequences route every cycle (chosen on the valid split: README, issue 15)
  int64_t refresh_gap = 16;
  int64_t refresh_hold = 4;          // ... keeping a set only once this many cycles in a row committed no token outside it
  bool drift_enabled = true;        // topic-switch detection
  double drift_fast = 0.5, drift_slow = 0.05, drift_jump = 0.2;  // miss-rate averages; drift when fast > slow + jump
  int64_t drift_warmup = 8, drift_keep_steps = 1, drift_boost = 8;
};

struct DrafterOptions {
  // Vocabulary policy, as the Python runtime names it: "" (the drafter's own vocabulary, fixed),
  // "full", "eagle3", "frspec:K", "evospec:K" (retrieval one cycle ahead, as Python's pipelined
  // policy), "evospec:K:sync" (retrieval in the same cycle), "evospec:K:VARIANT", "dynaspec:K:C".
  std::string vocab;
  // DynaSpec router file (``evospec vocab dynaspec``), for "dynaspec:K:C"; with "evospec:K" the fill of
  // greedy sequences ranks its clusters (EvoSpecPolicySettings::fill_source).
  std::string router;
  // EvoSpec's settings for ``evospec:K`` policies (default: the built-in ones).
  EvoSpecPolicySettings evospec;
  // Token-frequency file (``evospec vocab frequencies``); default: the bundle's statistical index.
  std::string frequencies;
  // A HuggingFace target directory to read the token embeddings from when the drafter has none
  // (EAGLE-3 drafters usually share the target's). Ignored when the drafter has its own.
  std::string target_dir;
  // Check every bundle file's size and sha256 against the manifest (as Python does by default).
  bool check_files = true;
  // KV-cache slots of the drafter's single layer: committed positions plus a step's scratch.
  int64_t max_context = 4096;
  // libtorch intra-op threads, set when the drafter opens (process-wide: libtorch has one pool);
  // 0 leaves libtorch's choice. On a loaded machine 1 is often fastest (README, issue 20).
  int threads = 0;
};

// Sizes and the active vocabulary, for services that size their own buffers.
struct DrafterInfo {
  int64_t hidden_size = 0;         // drafter width d
  int64_t target_hidden_size = 0;  // width of each tapped target state (features are 3x this)
  int64_t vocab_size = 0;          // target vocabulary (reservoir rows)
  std::string backend;             // the bundle's backend as compiled (the C++ library runs libtorch)
  std::string policy;              // the vocabulary policy in use
};

class Drafter {
 public:
  // Open ``bundle`` (a directory ``evospec compile`` wrote). Throws BundleError or SettingsError.
  explicit Drafter(const std::string& bundle, const DrafterOptions& options = {});
  ~Drafter();
  Drafter(Drafter&&) noexcept;
  Drafter& operator=(Drafter&&) noexcept;
  Drafter(const Drafter&) = delete;
  Drafter& operator=(const Drafter&) = delete;

  // Begin a sequence: clears the KV cache and resets the policy to ``prompt`` (token ids). ``greedy``: whether
  // the caller verifies this sequence greedily (temperature 0) or samples; an ``evospec:K`` policy with a router
  // fills greedy sequences from the router's clusters (``fill_source = "auto"``). ``start(prompt)`` is a sampled
  // sequence's start, the fill of every sequence before routers were read.
  void start(const std::vector<int64_t>& prompt, bool greedy = false);

  // Draft the next tree. ``features``: [positions, 3 * target_hidden_size] float32, row-major: the
  // tapped target hidden states (low, middle, high, concatenated) of the positions committed since
  // the last call (the whole prompt at the first call). ``newest_token``: the token the target
  // just produced after them (the root the tree grows from). The drafter pairs each position with
  // the token after it: the prompt (first call) or the tokens ``commit`` received, then
  // ``newest_token``; ``positions`` must equal that count. Writes those positions into the KV cache.
  DraftTree propose(const float* features, int64_t positions, int64_t newest_token, const DraftSettings& settings);

  // The draft tokens the target accepted this step, in order along the accepted path (not the
  // target's own bonus token: that is the next call's ``newest_token``). Their KV entries are
  // written at the next ``propose``, from the target's states there (EAGLE-3 drafts from the
  // target's features); the policy observes them with the newest token then, as Python does.
  // A step the caller verifies without drafting (a plain step: Python's ``plain_fallback``) commits
  // the token it fed the target, so the next ``propose`` takes that position too; calls add up.
  void commit(const std::vector<int64_t>& accepted);

  // Target ids the head scored at the last propose, in head-column order.
  std::vector<int64_t> active_ids() const;
  // Head columns whose row changed at the last propose (the resident rows' delta).
  int64_t moved_rows() const;
  // ms the last propose spent in the vocabulary policy (observing, choosing the active set) and in moving the
  // set's rows into the head (the plan), both inside propose's time
  std::pair<double, double> policy_ms() const;

  // Online row updates: overwrite the reservoir rows of ``ids`` (``rows``: [ids.size(), d] float32,
  // row-major) and refresh the resident copies of those that are active.
  void update_rows(const std::vector<int64_t>& ids, const float* rows);
  // The current reservoir row of ``id`` (d floats).
  std::vector<float> row(int64_t id) const;

  // Online updates of the fuse/trunk weights (aligners that train more than head rows), named as
  // the Python runtime's CompiledDrafter.trunk_weights() names them: "fc.weight", "norm.weight",
  // "layer.<module>.weight" (e.g. "layer.self_attn.q_proj.weight"). ``values``: the whole weight,
  // row-major float32, ``count`` elements. Throws SettingsError for an unknown name or wrong size.
  void update_weight(const std::string& name, const float* values, size_t count);

  const DrafterInfo& info() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace evospec
