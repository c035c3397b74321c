// EvoSpec's living vocabulary (runtime/vocab/evospec_policy.py), step for step.
//
// The Python policy keeps its evidence in dicts, whose insertion order decides the order of the
// tail (and so the head's column order and top-k tie-breaks). ``Ordered`` reproduces a Python
// dict's order rules: an update keeps a key's place, a new key goes last, a filter keeps order.
#include <algorithm>
#include <cmath>
#include <list>
#include <unordered_map>
#include <unordered_set>

#include "evospec/drafter.hpp"
#include "policy.hpp"

namespace evospec::detail {

namespace {

// The session successor table's bounds (SESSION_SUCCESSORS, SESSION_KEYS_PER_K, SESSION_KEYS_MIN in Python).
constexpr size_t kSessionSuccessors = 32;
constexpr int64_t kSessionKeysPerK = 2;
constexpr int64_t kSessionKeysMin = 1024;

class Ordered {
 public:
  void set(int64_t key, int64_t value) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      entries_[it->second].second = value;
      return;
    }
    index_[key] = entries_.size();
    entries_.emplace_back(key, value);
  }
  template <class Keep>
  void filter(Keep keep) {
    std::vector<std::pair<int64_t, int64_t>> kept;
    for (const auto& e : entries_)
      if (keep(e)) kept.push_back(e);
    assign(std::move(kept));
  }
  void assign(std::vector<std::pair<int64_t, int64_t>> entries) {
    entries_ = std::move(entries);
    index_.clear();
    for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].first] = i;
  }
  void clear() { entries_.clear(), index_.clear(); }
  size_t size() const { return entries_.size(); }
  const std::vector<std::pair<int64_t, int64_t>>& entries() const { return entries_; }

 private:
  std::vector<std::pair<int64_t, int64_t>> entries_;
  std::unordered_map<int64_t, size_t> index_;
};

// What followed each token this session, bounded like Python's OrderedDict of dicts: at most
// kSessionSuccessors successors per token (the stalest, first of equals, goes), at most ``keys``
// tokens (the one least recently followed by anything goes).
class SessionTable {
 public:
  void bound(size_t keys) { keys_ = keys; }
  void followed(int64_t token, int64_t successor, int64_t step) {
    auto it = table_.find(token);
    if (it == table_.end()) {
      recency_.push_back(token);
      it = table_.emplace(token, Entry{Ordered(), std::prev(recency_.end())}).first;
      if (table_.size() > keys_) {
        table_.erase(recency_.front());
        recency_.pop_front();
      }
    } else {
      recency_.splice(recency_.end(), recency_, it->second.where);  // move to the end, iterator stays valid
    }
    Ordered& nexts = it->second.nexts;
    nexts.set(successor, step);
    if (nexts.size() > kSessionSuccessors) {
      const auto& e = nexts.entries();
      int64_t stalest = std::min_element(e.begin(), e.end(), [](const auto& a, const auto& b) { return a.second < b.second; })->first;
      nexts.filter([&](const auto& x) { return x.first != stalest; });
    }
  }
  const Ordered* find(int64_t token) const {
    auto it = table_.find(token);
    return it == table_.end() ? nullptr : &it->second.nexts;
  }
  void clear() { table_.clear(), recency_.clear(); }

 private:
  struct Entry {
    Ordered nexts;
    std::list<int64_t>::iterator where;
  };
  std::unordered_map<int64_t, Entry> table_;
  std::list<int64_t> recency_;
  size_t keys_ = 0;
};

class EvoSpecPolicy : public Policy {
 public:
  EvoSpecPolicy(int64_t k, const TokenFrequencies& frequencies, int64_t vocab_size, const EvoSpecSettings& s,
                const SemanticIndex* semantic, bool frequency_fill)
      : s_(s), frequency_fill_(frequency_fill), k_(k), semantic_(s.semantic_count > 0 ? semantic : nullptr), member_(vocab_size, false) {
    if (!frequencies.has_successors && s.corpus_successors)
      throw SettingsError("policy evospec:K needs a frequency file with successors (`evospec vocab frequencies --successors 8`)");
    if (k < 2 || k > vocab_size)
      throw SettingsError("evospec:K needs 2 <= K <= " + std::to_string(vocab_size) + " (got " + std::to_string(k) + ")");
    core_size_ = std::min(k, std::max<int64_t>(1, static_cast<int64_t>(k * s.core_share)));
    ranked_ = frequencies.ranked(k, vocab_size);
    core_set_.insert(ranked_.begin(), ranked_.begin() + core_size_);
    if (s.corpus_successors) successors_ = frequencies.successors;
    session_next_.bound(static_cast<size_t>(std::max(kSessionKeysPerK * k, kSessionKeysMin)));
    reset({});
  }

  void decoding(bool greedy) override { greedy_ = greedy; }
  void reset(const std::vector<int64_t>& prompt) override {
    step_ = 0;
    stamp_.clear();
    session_next_.clear();
    has_last_ = false;
    fast_miss_ = slow_miss_ = 0.0;
    std::fill(member_.begin(), member_.end(), false);
    observe(prompt, at::Tensor());
  }

  void served(const std::vector<int64_t>& active) override { set_member(active); }

  bool patches_fresh() const override { return s_.fresh; }
  int64_t tail_size() const override { return k_ - core_size_; }
  int64_t core_size() const override { return core_size_; }

  // Python's EvoSpecPolicy.fresh: the committed tokens (context) and the newest one's corpus
  // successors, core tokens and repeats left out, in order.
  std::vector<int64_t> fresh(const std::vector<int64_t>& committed) const override {
    std::vector<int64_t> ids;
    if (s_.context) ids = committed;
    if (!committed.empty()) {
      auto corpus = successors_.find(committed.back());
      if (corpus != successors_.end()) ids.insert(ids.end(), corpus->second.begin(), corpus->second.end());
    }
    std::vector<int64_t> out;
    std::unordered_set<int64_t> seen;
    for (int64_t t : ids)
      if (!core_set_.count(t) && seen.insert(t).second) out.push_back(t);
    return out;
  }

  void observe(const std::vector<int64_t>& committed, const at::Tensor& state) override {
    ++step_;
    bool drifted = detect_drift(committed);
    if (drifted) {  // a topic switch: drop the old topic's evidence
      int64_t fresh = step_ - s_.drift_keep_steps;
      stamp_.filter([&](const auto& e) { return e.second >= fresh; });
    }
    for (int64_t token : committed) {
      if (s_.context) mark(token);
      if (has_last_ && s_.session_successors) session_next_.followed(last_, token, step_);
      last_ = token;
      has_last_ = true;
    }
    if (has_last_) {
      auto corpus = successors_.find(last_);
      if (corpus != successors_.end())
        for (int64_t token : corpus->second) mark(token);
      if (const Ordered* session = session_next_.find(last_)) {
        std::vector<int64_t> keys;  // copy: marking may not touch this map, but keep Python's iteration order
        for (const auto& e : session->entries()) keys.push_back(e.first);
        for (int64_t token : keys) mark(token);
      }
    }
    if (s_.max_age) {
      int64_t oldest = step_ - s_.max_age;
      stamp_.filter([&](const auto& e) { return e.second > oldest; });
    }
    if (semantic_ != nullptr && state.defined() && (!greedy_ || s_.semantic_greedy)) {
      int64_t count = s_.semantic_count * (drifted ? s_.drift_boost : 1);
      for (int64_t token : semantic_->query(state, count)) mark(token);
    }
    int64_t budget = k_ - core_size_;
    if (static_cast<int64_t>(stamp_.size()) > 4 * std::max<int64_t>(budget, 1)) {
      // sorted(stamp, key=stamp.get, reverse=True)[:2*budget]: newest first, ties keep dict order
      auto entries = stamp_.entries();
      std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
      entries.resize(std::min<size_t>(entries.size(), static_cast<size_t>(2 * budget)));
      stamp_.assign(std::move(entries));
    }
  }

  std::vector<int64_t> active_ids() override {
    int64_t budget = k_ - core_size_;
    std::vector<int64_t> tail;
    if (static_cast<int64_t>(stamp_.size()) <= budget) {
      for (const auto& e : stamp_.entries()) tail.push_back(e.first);
    } else {  // heapq.nlargest by (stamp, -token): newest first, ties to the lower id
      auto entries = stamp_.entries();
      std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
      });
      for (int64_t i = 0; i < budget; ++i) tail.push_back(entries[i].first);
    }
    std::vector<int64_t> active(ranked_.begin(), ranked_.begin() + core_size_);
    active.insert(active.end(), tail.begin(), tail.end());
    int64_t room = frequency_fill_ ? budget - static_cast<int64_t>(tail.size()) : 0;  // mass-routed: no fill here
    if (room > 0) {  // a mask, not a hash set of the tail: this runs every step
      std::vector<bool> in_tail(member_.size(), false);
      for (int64_t id : tail) in_tail[id] = true;
      for (size_t i = core_size_; i < ranked_.size() && room > 0; ++i)
        if (!in_tail[ranked_[i]]) active.push_back(ranked_[i]), --room;
    }
    fill_start_ = core_size_ + static_cast<int64_t>(tail.size());
    if (active != active_) {
      active_ = active;
      set_member(active);
    }
    return active_;
  }

  int64_t fill_start() const override { return fill_start_; }
  std::vector<int64_t> kept_ids() override { return {active_.begin(), active_.begin() + fill_start_}; }

 private:
  EvoSpecSettings s_;
  bool greedy_ = false;  // the sequence decodes greedily: no semantic query unless semantic_greedy
  bool frequency_fill_;
  int64_t k_, core_size_ = 0, fill_start_ = 0;
  const SemanticIndex* semantic_;
  std::vector<int64_t> ranked_, active_;
  std::unordered_set<int64_t> core_set_;
  std::unordered_map<int64_t, std::vector<int64_t>> successors_;
  std::vector<uint8_t> member_;  // bytes, not bits: reset and set for K ids every cycle
  Ordered stamp_;
  SessionTable session_next_;
  int64_t step_ = 0, last_ = 0;
  bool has_last_ = false;
  double fast_miss_ = 0.0, slow_miss_ = 0.0;

  void mark(int64_t token) {
    if (!core_set_.count(token)) stamp_.set(token, step_);
  }

  void set_member(const std::vector<int64_t>& active) {
    std::fill(member_.begin(), member_.end(), false);
    for (int64_t id : active) member_[id] = true;
  }

  bool detect_drift(const std::vector<int64_t>& committed) {
    if (!s_.drift_enabled || committed.empty() || std::find(member_.begin(), member_.end(), true) == member_.end())
      return false;
    int64_t hits = 0;
    for (int64_t t : committed) hits += member_[t] ? 1 : 0;
    // torch: member[committed].float().mean() in float32, then a Python float
    float mean = static_cast<float>(hits) / static_cast<float>(committed.size());
    double miss = 1.0 - static_cast<double>(mean);
    fast_miss_ += s_.drift_fast * (miss - fast_miss_);
    bool drifted = step_ > s_.drift_warmup && fast_miss_ > slow_miss_ + s_.drift_jump;
    slow_miss_ = drifted ? fast_miss_ : slow_miss_ + s_.drift_slow * (miss - slow_miss_);
    return drifted;
  }
};

}  // namespace

EvoSpecSettings evospec_variant(const EvoSpecSettings& settings, const std::string& name) {
  // runtime/vocab/evospec_settings.py VARIANTS: each changes one switch of the chosen settings
  EvoSpecSettings s = settings;
  if (name == "core-25") s.core_share = 0.25;
  else if (name == "core-75") s.core_share = 0.75;
  else if (name == "frequency-only") s.core_share = 1.0;
  else if (name == "no-context") s.context = false;
  else if (name == "no-corpus-successors") s.corpus_successors = false;
  else if (name == "no-session-successors") s.session_successors = false;
  else if (name == "no-semantic") s.semantic_count = 0;
  else if (name == "semantic-256") s.semantic_count = 256;
  else if (name == "age-64") s.max_age = 64;
  else if (name == "no-fresh") s.fresh = false;
  else if (name == "semantic-greedy") s.semantic_greedy = true;
  else if (name == "no-refresh-gate") s.refresh_gap = 1;
  else if (name == "hold-0") s.refresh_hold = 0;
  else if (name == "hold-16") s.refresh_hold = 16;
  else if (name == "refresh-4-hold-0") s.refresh_gap = 4, s.refresh_hold = 0;
  else if (name == "every-cycle") s.refresh_gap = 1, s.semantic_greedy = true;
  else if (name == "no-drift") s.drift_enabled = false;
  else if (name == "route-semantic-1024")
    throw SettingsError("evospec variant 'route-semantic-1024' (semantic rows routed from each cycle's root state) is "
                        "not implemented in the C++ drafter library; run it with the Python drafter");
  else if (name == "frequency-fill") s.mass_fill = false;
  else if (name == "no-sticky") s.mass_sticky = 0.0;
  else if (name == "router-fill") s.fill_source = "router";
  else if (name == "mass-fill") s.fill_source = "mass";
  else if (name == "unseen-last" || name == "synthesised-last" || name == "prior-half" || name == "prior-1" ||
           name == "rank-max")
    throw SettingsError("evospec variant '" + name + "' (how the mass fill chooses or orders its rows) is not implemented in the C++ "
                        "drafter library; run it with the Python drafter");
  else if (name == "target-top-256")
    throw SettingsError("evospec variant 'target-top-256' (verification feedback) is not implemented in the C++ "
                        "drafter library: the library never sees the target's logits; run it with the Python drafter");
  else if (name == "no-curriculum" || name == "curriculum-greedy" || name == "align-retrieved-rows" ||
           name == "rest-mass" || name == "renormalised-teacher") {
  }  // alignment variants: the policy runs the chosen settings
  else
    throw SettingsError("evospec variant '" + name + "' is not in built-in settings; known: age-64, align-retrieved-rows, "
                        "core-25, core-75, curriculum-greedy, every-cycle, frequency-fill, frequency-only, hold-0, hold-16, mass-fill, no-context, no-corpus-successors, no-curriculum, no-drift, "
                        "no-fresh, no-refresh-gate, no-semantic, no-session-successors, no-sticky, prior-1, prior-half, rank-max, "
                        "refresh-4-hold-0, renormalised-teacher, rest-mass, router-fill, semantic-256, semantic-greedy, synthesised-last, target-top-256, unseen-last");
  return s;
}

std::unique_ptr<Policy> make_evospec_policy(int64_t k, const TokenFrequencies& frequencies, int64_t vocab_size,
                                            const EvoSpecSettings& settings, const SemanticIndex* semantic,
                                            bool frequency_fill) {
  return std::make_unique<EvoSpecPolicy>(k, frequencies, vocab_size, settings, semantic, frequency_fill);
}

}  // namespace evospec::detail
