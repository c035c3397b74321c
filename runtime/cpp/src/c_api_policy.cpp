// The C ABI's standalone vocabulary policy (drafter_c.h, evospec_policy_*): the library's living vocabulary for a
// caller that drafts by other means (Python's drafter over ONNX Runtime or torch, runtime/vocab/native_policy.py).
//
// Why: the policy's per-step work (observing, the mass fill's ranking and gather, the pipelined job) is a few
// hundred small numpy and torch calls a step in Python, each dearer in the decoding loop than alone; the library
// runs the same policies (the same sets step by step, tests/test_cpp.py and tests/test_native_policy.py) in a third
// of the time. The caller keeps its own rows and plan: this hands out ids only.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "bundle.hpp"
#include "c_api_guard.hpp"
#include "policy.hpp"

using evospec::capi::guarded;
using evospec::capi::missing;
using evospec::capi::text;

struct evospec_policy {
  std::unique_ptr<evospec::detail::SemanticIndex> semantic;  // declared first: the policy queries it while it lives
  std::unique_ptr<evospec::detail::Policy> policy;
  int64_t vocab_size = 0, hidden_size = 0;
  std::vector<int64_t> last;  // the set last handed out
};

namespace {

// The caller's state [width] as a tensor over its memory (the policy copies what it keeps past the call).
at::Tensor state_tensor(const evospec_policy& p, const float* state, int64_t width) {
  if (state == nullptr) return at::Tensor();
  if (width != p.hidden_size)
    throw evospec::SettingsError("a drafter state of width " + std::to_string(width) + "; this policy's drafter has " +
                                 std::to_string(p.hidden_size));
  return at::from_blob(const_cast<float*>(state), {width}, at::kFloat);
}

std::vector<int64_t> token_ids(const evospec_policy& p, const int64_t* ids, int64_t count, const char* what) {
  if (count < 0) throw evospec::SettingsError(std::string(what) + ": a negative count");
  std::vector<int64_t> out(ids, ids + count);
  for (int64_t t : out)
    if (t < 0 || t >= p.vocab_size)
      throw evospec::SettingsError(std::string(what) + " token id " + std::to_string(t) +
                                   " is outside the vocabulary [0, " + std::to_string(p.vocab_size) + ")");
  return out;
}

}  // namespace

extern "C" {

int evospec_policy_open(const char* bundle, const char* vocab, const char* frequencies, const char* router,
                        int64_t vocab_size, int64_t hidden_size, evospec_policy** out) {
  if (bundle == nullptr) return missing("bundle");
  if (vocab == nullptr) return missing("vocab");
  if (out == nullptr) return missing("out");
  *out = nullptr;
  return guarded([&] {
    c10::InferenceMode guard;
    std::string spec = vocab;
    if (spec == "eagle3")
      throw evospec::SettingsError("policy eagle3 is the drafter's own vocabulary, fixed: there is nothing for the "
                                   "library to run (drop the native policy runtime)");
    if (vocab_size < 1 || hidden_size < 1)
      throw evospec::SettingsError("a policy needs the vocabulary's size and the drafter's width (got " +
                                   std::to_string(vocab_size) + " and " + std::to_string(hidden_size) + ")");
    std::string path = evospec::detail::normalise_path(bundle);
    evospec::json::Value manifest = evospec::detail::read_manifest(path);
    auto p = std::make_unique<evospec_policy>();
    p->vocab_size = vocab_size;
    p->hidden_size = hidden_size;
    p->policy = evospec::detail::make_policy(
        spec, {path, text(frequencies), text(router), evospec::EvoSpecPolicySettings{}, vocab_size, hidden_size, {},
               p->semantic},
        manifest);
    *out = p.release();
  });
}

void evospec_policy_close(evospec_policy* policy) { delete policy; }

int evospec_policy_routed(evospec_policy* policy, int* routed) {
  if (policy == nullptr) return missing("policy");
  if (routed == nullptr) return missing("routed");
  *routed = policy->policy->routed() ? 1 : 0;
  return EVOSPEC_OK;
}

int evospec_policy_start(evospec_policy* policy, const int64_t* prompt, int64_t count, int greedy) {
  if (policy == nullptr) return missing("policy");
  if (prompt == nullptr && count > 0) return missing("prompt");
  return guarded([&] {
    c10::InferenceMode guard;
    std::vector<int64_t> ids = token_ids(*policy, prompt, count, "prompt");
    policy->policy->decoding(greedy != 0);
    policy->policy->reset(ids);
    policy->last.clear();
  });
}

int evospec_policy_observe(evospec_policy* policy, const int64_t* committed, int64_t count, const float* state,
                           int64_t width) {
  if (policy == nullptr) return missing("policy");
  if (committed == nullptr && count > 0) return missing("committed");
  return guarded([&] {
    c10::InferenceMode guard;
    std::vector<int64_t> ids = token_ids(*policy, committed, count, "committed");
    at::Tensor s = state_tensor(*policy, state, width);
    policy->policy->observe(ids, s.defined() ? s.clone() : s);  // the caller's buffer is reused after the call
  });
}

int evospec_policy_start_pending(evospec_policy* policy) {
  if (policy == nullptr) return missing("policy");
  return guarded([&] {
    c10::InferenceMode guard;
    policy->policy->start_pending();
  });
}

int evospec_policy_next(evospec_policy* policy, const float* state, int64_t width, int64_t* ids, int64_t capacity,
                        int64_t* size, int* changed) {
  if (policy == nullptr) return missing("policy");
  if (size == nullptr || changed == nullptr) return missing("a next() output");
  return guarded([&] {
    c10::InferenceMode guard;
    at::Tensor s = state_tensor(*policy, state, width);
    bool routing = policy->policy->routed() && s.defined();
    std::vector<int64_t> active = routing ? policy->policy->route(s) : policy->policy->active_ids();
    if (routing && policy->policy->route_kept()) {  // the set before, unchanged: the caller keeps its copy
      *size = static_cast<int64_t>(policy->last.size());
      *changed = 0;
      return;
    }
    *size = static_cast<int64_t>(active.size());
    if (*size > capacity || (ids == nullptr && *size > 0))
      throw evospec::SettingsError("an active set of " + std::to_string(*size) + " ids does not fit a buffer of " +
                                   std::to_string(capacity));
    *changed = active != policy->last ? 1 : 0;
    std::copy(active.begin(), active.end(), ids);
    if (*changed) policy->last = std::move(active);
  });
}

}  // extern "C"
