// A policy from its name (runtime/vocab/__init__.py's make_policy): what the Drafter runs, and what the C ABI's
// standalone policy (evospec_policy_open) runs for a caller that drafts by other means.
#include <filesystem>

#include "bundle.hpp"
#include "evospec/drafter.hpp"
#include "policy.hpp"

namespace evospec::detail {

std::unique_ptr<Policy> make_policy(const std::string& spec, PolicyInputs d, const json::Value& manifest) {
  int64_t vocab = d.vocab_size;
  std::string name = spec.substr(0, spec.find(':'));
  std::string arg = spec.find(':') == std::string::npos ? "" : spec.substr(spec.find(':') + 1);
  auto is_number = [](const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; };
  auto frequencies = [&](const std::string& needs) {
    std::string path = d.frequencies;
    if (path.empty() && manifest.has("statistical_index"))
      path = normalise_path(d.bundle + "/" + manifest.at("statistical_index").at("file").as_string());
    if (path.empty()) throw SettingsError(needs);
    return TokenFrequencies::load(path);
  };
  if (name == "full" && arg.empty()) {
    std::vector<int64_t> ids(vocab);
    for (int64_t i = 0; i < vocab; ++i) ids[i] = i;
    return std::make_unique<StaticPolicy>(ids);
  }
  if (name == "eagle3" && arg.empty())  // the drafter's own vocabulary: the plan it starts with
    return std::make_unique<StaticPolicy>(d.own_ids);
  if (name == "frspec") {
    if (!is_number(arg)) throw SettingsError("policy '" + spec + "': expected frspec:K with an integer K, e.g. frspec:16384");
    auto f = frequencies("policy frspec:K needs --frequencies FILE (make one with `evospec vocab frequencies`)");
    return std::make_unique<StaticPolicy>(f.top(std::stoll(arg), vocab));
  }
  if (name == "evospec") {
    std::string k = arg.substr(0, arg.find(':'));
    std::string mode = arg.find(':') == std::string::npos ? "" : arg.substr(arg.find(':') + 1);
    if (!is_number(k))
      throw SettingsError("policy '" + spec + "': expected evospec:K, evospec:K:sync or evospec:K:VARIANT with an "
                          "integer K, e.g. evospec:16384");
    auto f = frequencies("policy evospec:K needs --frequencies FILE (`evospec vocab frequencies --successors 8`)");
    bool sync = mode == "sync" || (mode.size() > 5 && mode.compare(mode.size() - 5, 5, ":sync") == 0);
    std::string variant = mode == "sync" ? "" : sync ? mode.substr(0, mode.size() - 5) : mode;
    EvoSpecSettings settings = variant.empty() ? d.evospec : evospec_variant(d.evospec, variant);
    if (manifest.has("semantic_index") && settings.semantic_count > 0) {
      d.semantic = load_semantic_index(d.bundle, vocab, d.hidden_size);
      if (!d.semantic)
        throw SettingsError("policy " + spec + " retrieves from the bundle's semantic index, but this build of the C++ "
                            "library has no USearch (configure with -DEVOSPEC_WITH_USEARCH=ON)");
    }
    int64_t size = std::stoll(k);
    // a mass-routed set fills its own tail: the inner policy builds no frequency fill to throw away
    std::unique_ptr<Policy> policy = make_evospec_policy(size, f, vocab, settings, d.semantic.get(), !settings.mass_fill);
    if (!sync) policy = std::make_unique<PipelinedPolicy>(std::move(policy));
    if (!settings.mass_fill) return policy;
    if (settings.fill_source != "mass" && settings.fill_source != "router" && settings.fill_source != "auto")
      throw SettingsError("fill_source must be 'mass', 'router' or 'auto' (got '" + settings.fill_source + "')");
    std::shared_ptr<const ClusterIndex> router;  // the fill over a router's clusters: every sequence, or greedy ones
    if (settings.fill_source == "router" || (settings.fill_source == "auto" && !d.router.empty())) {
      if (d.router.empty())
        throw SettingsError("policy '" + spec + "' fills its tail from a DynaSpec router's clusters: give --router FILE "
                            "(train one with `evospec vocab dynaspec`)");
      router = std::make_shared<const Router>(d.router, vocab);
    }
    auto ranked = f.ranked(vocab, vocab);
    std::vector<int64_t> core_ids(ranked.begin(), ranked.begin() + policy->core_size());
    if (settings.fill_source == "router")
      return make_refresh_gate(make_mass_routed(std::move(policy), router, core_ids, ranked, size, settings.mass_sticky),
                               settings.refresh_gap, settings.refresh_hold);
    if (!manifest.has("mass_index"))
      throw SettingsError("policy '" + spec + "' fills its tail by mass, and this bundle has no mass index (compile it "
                          "with --mass-clusters > 0, or run evospec:K:frequency-fill)");
    return make_refresh_gate(make_mass_routed(std::move(policy), load_mass_index(d.bundle, vocab, d.hidden_size),
                                              core_ids, ranked, size, settings.mass_sticky, router),
                             settings.refresh_gap, settings.refresh_hold);
  }
  if (name == "dynaspec") {
    std::string k = arg.substr(0, arg.find(':'));
    std::string c = arg.find(':') == std::string::npos ? "" : arg.substr(arg.find(':') + 1);
    if (!is_number(k) || !is_number(c))
      throw SettingsError("policy '" + spec + "': expected dynaspec:K:C with integers K and C, e.g. dynaspec:16384:64");
    if (d.router.empty())
      throw SettingsError("policy dynaspec:K:C needs --router FILE (train one with `evospec vocab dynaspec`)");
    return make_dynaspec_policy(std::stoll(k), std::stoll(c), std::make_shared<const Router>(d.router, vocab), vocab);
  }
  throw SettingsError("unknown vocabulary policy '" + spec + "'; the C++ drafter knows: full, eagle3, frspec:K, "
                      "evospec:K, evospec:K:sync, evospec:K:VARIANT, dynaspec:K:C");
}


}  // namespace evospec::detail
