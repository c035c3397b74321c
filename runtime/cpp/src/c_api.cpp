// The C ABI (include/evospec/drafter_c.h): exceptions become a status and a per-thread message.
#include "evospec/drafter_c.h"

#include <algorithm>
#include <string>
#include <tuple>

#include "evospec/drafter.hpp"
#include "c_api_guard.hpp"
#include "gather.hpp"
#include "greedy_choice.hpp"
#include "verify.hpp"

struct evospec_drafter {
  evospec::Drafter drafter;
  int siblings = 0;  // evospec_drafter_set_siblings: DraftSettings::siblings of the greedy chains proposed
  double sibling_ratio = 0;  // evospec_drafter_set_sibling_ratio: DraftSettings::sibling_ratio
};

using evospec::capi::guarded;
using evospec::capi::last_error;
using evospec::capi::missing;
using evospec::capi::text;

extern "C" {

const char* evospec_last_error(void) { return last_error.c_str(); }

int evospec_drafter_open(const char* bundle, const char* vocab, const char* frequencies, const char* router,
                         const char* target_dir, int threads, int64_t max_context, int check_files,
                         evospec_drafter** out) {
  if (bundle == nullptr) return missing("bundle");
  if (out == nullptr) return missing("out");
  *out = nullptr;
  return guarded([&] {
    evospec::DrafterOptions options;
    options.vocab = text(vocab);
    options.frequencies = text(frequencies);
    options.router = text(router);
    options.target_dir = text(target_dir);
    options.threads = threads;
    if (max_context > 0) options.max_context = max_context;
    options.check_files = check_files != 0;
    *out = new evospec_drafter{evospec::Drafter(bundle, options)};
  });
}

void evospec_drafter_close(evospec_drafter* drafter) { delete drafter; }

int evospec_drafter_start(evospec_drafter* drafter, const int64_t* prompt, int64_t count) {
  if (drafter == nullptr) return missing("drafter");
  if (prompt == nullptr && count > 0) return missing("prompt");
  return guarded([&] { drafter->drafter.start(std::vector<int64_t>(prompt, prompt + count)); });
}

int evospec_drafter_start_greedy(evospec_drafter* drafter, const int64_t* prompt, int64_t count, int greedy) {
  if (drafter == nullptr) return missing("drafter");
  if (prompt == nullptr && count > 0) return missing("prompt");
  return guarded([&] { drafter->drafter.start(std::vector<int64_t>(prompt, prompt + count), greedy != 0); });
}

int evospec_drafter_propose(evospec_drafter* drafter, const float* features, int64_t positions, int64_t newest_token,
                            int depth, int width, int budget, int64_t* tokens, int64_t* parents, int64_t* depths,
                            int64_t capacity, int64_t* nodes) {
  return evospec_drafter_propose_costed(drafter, features, positions, newest_token, depth, width, budget, nullptr, tokens,
                                        parents, depths, nullptr, capacity, nodes, nullptr, nullptr, nullptr);
}

int evospec_drafter_propose_costed(evospec_drafter* drafter, const float* features, int64_t positions,
                                   int64_t newest_token, int depth, int width, int budget,
                                   const evospec_step_costs* costs, int64_t* tokens, int64_t* parents,
                                   int64_t* depths, double* scores, int64_t capacity, int64_t* nodes,
                                   int64_t* level_rows, int64_t* levels, double* timings) {
  if (drafter == nullptr) return missing("drafter");
  if (features == nullptr || tokens == nullptr || parents == nullptr || depths == nullptr || nodes == nullptr)
    return missing("a propose() buffer");
  if (level_rows != nullptr && levels == nullptr) return missing("levels (with level_rows)");
  if (costs != nullptr && costs->rates == nullptr && costs->rate_count != 0) return missing("costs->rates");
  return guarded([&] {
    evospec::StepCosts step_costs;
    evospec::DraftSettings settings{depth, width, budget};
    settings.siblings = drafter->siblings;
    settings.sibling_ratio = drafter->sibling_ratio;
    if (costs != nullptr) {
      step_costs.fixed_ms = costs->fixed_ms;
      step_costs.level_ms = costs->level_ms;
      step_costs.row_ms = costs->row_ms;
      step_costs.level_row_ms = costs->level_row_ms;
      step_costs.spine = costs->spine;
      if (costs->rates != nullptr) step_costs.rates.assign(costs->rates, costs->rates + costs->rate_count);
      settings.costs = &step_costs;
    }
    evospec::DraftTree tree = drafter->drafter.propose(features, positions, newest_token, settings);
    int64_t n = static_cast<int64_t>(tree.tokens.size());
    if (n > capacity)
      throw evospec::SettingsError("the draft tree has " + std::to_string(n) + " nodes, the buffers hold " +
                                   std::to_string(capacity));
    for (int64_t i = 0; i < n; ++i) {
      tokens[i] = tree.tokens[i];
      parents[i] = tree.parents[i];
      depths[i] = tree.depths[i];
      if (scores != nullptr) scores[i] = tree.scores[i];
    }
    *nodes = n;
    if (level_rows != nullptr)  // at most depth - 1 entries: the buffer holds depth
      for (size_t i = 0; i < tree.level_rows.size(); ++i) level_rows[i] = tree.level_rows[i];
    if (levels != nullptr) *levels = static_cast<int64_t>(tree.level_rows.size());
    if (timings != nullptr) timings[0] = tree.root_ms, timings[1] = tree.tree_ms;
  });
}

int evospec_drafter_set_siblings(evospec_drafter* drafter, int siblings) {
  if (drafter == nullptr) return missing("drafter");
  return guarded([&] {
    if (siblings < 0) throw evospec::SettingsError("draft siblings must be >= 0, got " + std::to_string(siblings));
    drafter->siblings = siblings;
  });
}

int evospec_drafter_set_sibling_ratio(evospec_drafter* drafter, double ratio) {
  if (drafter == nullptr) return missing("drafter");
  return guarded([&] {
    evospec::check_sibling_ratio(ratio);
    drafter->sibling_ratio = ratio;
  });
}

int evospec_drafter_propose_sampled(evospec_drafter* drafter, const float* features, int64_t positions,
                                    int64_t newest_token, int depth, double temperature, const double* uniforms,
                                    int64_t* tokens, int64_t* parents, int64_t* depths, double* scores, double* laws,
                                    int64_t law_capacity, int64_t* law_columns, int64_t capacity, int64_t* nodes,
                                    double* timings) {
  if (drafter == nullptr) return missing("drafter");
  if (features == nullptr || tokens == nullptr || parents == nullptr || depths == nullptr || nodes == nullptr ||
      laws == nullptr || law_columns == nullptr || uniforms == nullptr)
    return missing("a propose_sampled() buffer");
  return guarded([&] {
    if (!(temperature > 0)) throw evospec::SettingsError("a sampled chain needs temperature > 0");
    evospec::DraftSettings settings = evospec::DraftSettings::chain(depth);
    settings.temperature = temperature;
    settings.uniforms = uniforms;
    evospec::DraftTree tree = drafter->drafter.propose(features, positions, newest_token, settings);
    int64_t n = static_cast<int64_t>(tree.tokens.size());
    if (n > capacity)
      throw evospec::SettingsError("the draft has " + std::to_string(n) + " nodes, the buffers hold " +
                                   std::to_string(capacity));
    if (static_cast<int64_t>(tree.laws.size()) > law_capacity)
      throw evospec::SettingsError("the draft's laws take " + std::to_string(tree.laws.size()) + " doubles, the buffer "
                                   "holds " + std::to_string(law_capacity));
    for (int64_t i = 0; i < n; ++i) {
      tokens[i] = tree.tokens[i];
      parents[i] = tree.parents[i];
      depths[i] = tree.depths[i];
      if (scores != nullptr) scores[i] = tree.scores[i];
    }
    std::copy(tree.laws.begin(), tree.laws.end(), laws);
    *law_columns = tree.law_columns;
    *nodes = n;
    if (timings != nullptr) timings[0] = tree.root_ms, timings[1] = tree.tree_ms;
  });
}

int evospec_drafter_commit(evospec_drafter* drafter, const int64_t* accepted, int64_t count) {
  if (drafter == nullptr) return missing("drafter");
  if (accepted == nullptr && count > 0) return missing("accepted");
  return guarded([&] { drafter->drafter.commit(std::vector<int64_t>(accepted, accepted + count)); });
}

int evospec_drafter_active(evospec_drafter* drafter, int64_t* ids, int64_t capacity, int64_t* size, int64_t* moved) {
  if (drafter == nullptr) return missing("drafter");
  return guarded([&] {
    std::vector<int64_t> active = drafter->drafter.active_ids();
    if (size != nullptr) *size = static_cast<int64_t>(active.size());
    if (moved != nullptr) *moved = drafter->drafter.moved_rows();
    if (ids != nullptr)
      for (int64_t i = 0; i < capacity && i < static_cast<int64_t>(active.size()); ++i) ids[i] = active[i];
  });
}

int evospec_drafter_policy_ms(evospec_drafter* drafter, double* ms) {
  if (drafter == nullptr) return missing("drafter");
  if (ms == nullptr) return missing("ms");
  std::tie(ms[0], ms[1]) = drafter->drafter.policy_ms();
  return EVOSPEC_OK;
}

int evospec_drafter_sizes(evospec_drafter* drafter, int64_t* sizes) {
  if (drafter == nullptr) return missing("drafter");
  if (sizes == nullptr) return missing("sizes");
  const evospec::DrafterInfo& info = drafter->drafter.info();
  sizes[0] = info.hidden_size;
  sizes[1] = info.target_hidden_size;
  sizes[2] = info.vocab_size;
  return EVOSPEC_OK;
}

int evospec_verify_sampled(const float* logits, int64_t rows, int64_t vocab, int64_t row_stride, int64_t vocab_stride,
                           const int64_t* tokens, const int64_t* parents, int64_t nodes, const double* laws,
                           const int64_t* columns, int64_t law_columns, double temperature, double top_p,
                           const double* uniforms, int64_t uniform_count, int64_t* accepted, int64_t* accepted_count,
                           int64_t* bonus, int64_t* uniforms_used) {
  if (logits == nullptr || accepted_count == nullptr || bonus == nullptr || uniforms == nullptr)
    return missing("a verify_sampled() buffer");
  if (nodes > 0 && (tokens == nullptr || parents == nullptr || accepted == nullptr))
    return missing("a verify_sampled() node buffer");
  return guarded([&] {
    if (!(temperature > 0)) throw evospec::SettingsError("sampling verification needs temperature > 0");
    if (!(top_p > 0 && top_p <= 1)) throw evospec::SettingsError("top_p must be in (0, 1]");
    if (vocab < 1 || rows != nodes + 1)
      throw evospec::SettingsError("logits of " + std::to_string(rows) + " rows of " + std::to_string(vocab) +
                                   " tokens for a tree of " + std::to_string(nodes) + " nodes (rows = nodes + 1)");
    if (laws != nullptr && columns == nullptr && law_columns != vocab)
      throw evospec::SettingsError("laws without column ids must span the vocabulary");
    evospec::detail::SampledStep step{logits, rows, vocab, row_stride, vocab_stride, tokens, parents, nodes, laws,
                                      columns, law_columns, temperature, top_p, uniforms, uniform_count};
    evospec::detail::SampledVerdict verdict = evospec::detail::verify_sampled(step);
    std::copy(verdict.accepted.begin(), verdict.accepted.end(), accepted);
    *accepted_count = static_cast<int64_t>(verdict.accepted.size());
    *bonus = verdict.bonus;
    if (uniforms_used != nullptr) *uniforms_used = verdict.uniforms_used;
  });
}

int evospec_sampling_weights(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p,
                             float* weights, double* total) {
  if (logits == nullptr || weights == nullptr || total == nullptr) return missing("a sampling_weights() buffer");
  return guarded([&] {
    if (!(temperature > 0)) throw evospec::SettingsError("sampling needs temperature > 0");
    if (!(top_p > 0 && top_p <= 1)) throw evospec::SettingsError("top_p must be in (0, 1]");
    if (vocab < 1) throw evospec::SettingsError("an empty row of logits");
    *total = evospec::detail::sampling_weights(logits, vocab, stride, temperature, top_p, weights);
  });
}

int evospec_copy_rows(void* rows, int64_t row_count, const void* reservoir, int64_t reservoir_rows, int64_t row_bytes,
                      const int64_t* cols, const int64_t* ids, int64_t count) {
  if (count > 0 && (rows == nullptr || reservoir == nullptr || cols == nullptr || ids == nullptr))
    return missing("a copy_rows() buffer");
  return guarded([&] {
    if (count < 0 || row_bytes < 1) throw evospec::SettingsError("copy_rows: a negative count or an empty row");
    for (int64_t i = 0; i < count; ++i)
      if (cols[i] < 0 || cols[i] >= row_count || ids[i] < 0 || ids[i] >= reservoir_rows)
        throw evospec::SettingsError("copy_rows: row " + std::to_string(ids[i]) + " to column " +
                                     std::to_string(cols[i]) + " is outside " + std::to_string(reservoir_rows) +
                                     " reservoir rows or " + std::to_string(row_count) + " columns");
    evospec::detail::copy_rows_prefetched(static_cast<char*>(rows), static_cast<const char*>(reservoir),
                                          static_cast<size_t>(row_bytes), cols, ids, static_cast<size_t>(count));
  });
}

int evospec_update_plan(const int64_t* previous_ids, int64_t previous_size, int64_t bucket, const int64_t* active,
                        int64_t count, int64_t* ids, int64_t* moved, int64_t* cols, int64_t* changed) {
  if (previous_ids == nullptr || active == nullptr || ids == nullptr || cols == nullptr || moved == nullptr ||
      changed == nullptr)
    return missing("an update_plan() buffer");
  return guarded([&] {
    if (count < 1 || count > bucket || previous_size < 0 || previous_size > bucket)
      throw evospec::SettingsError("update_plan: " + std::to_string(count) + " active ids after " +
                                   std::to_string(previous_size) + " in a bucket of " + std::to_string(bucket));
    *moved = evospec::detail::update_columns(previous_ids, previous_size, bucket, active, count, ids);
    *changed = 0;
    if (*moved < 0) return;
    for (int64_t j = 0; j < bucket; ++j)
      if (ids[j] != previous_ids[j]) cols[(*changed)++] = j;
  });
}

int evospec_greedy_choice(const float* logits, int64_t n, int runner_up, int64_t* ids, float* logps) {
  if (logits == nullptr || ids == nullptr || logps == nullptr) return missing("a greedy_choice() buffer");
  return guarded([&] {
    const evospec::detail::GreedyChoice choice = evospec::detail::greedy_choice(logits, n, runner_up != 0);
    ids[0] = choice.first;
    ids[1] = choice.second;
    logps[0] = choice.first_logp;
    logps[1] = choice.second_logp;
  });
}

}  // extern "C"
