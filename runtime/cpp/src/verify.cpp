// Speculative sampling verification of one step in C++ (C ABI evospec_verify_sampled; Python:
// runtime/native_verify.py): Python's verify_sampling and TargetRow (runtime/verify.py, runtime/target_law.py)
// decision for decision, over the same law: temperature in float32, the softmax (as weights exp(x - max x):
// row_kernels.cpp), the top-p nucleus (a token is removed while the mass of it and every less likely token is at
// most (1 - top_p) of the total; ties by logit, then id), each node's children tried in draft order by recursive
// rejection (accept x when u q(x) K < w(x), else w <- max(w - K q, 0)), and the bonus token drawn from what is left.
//
// Why here: Python's verifier costs ~0.5 ms a visited row of 151k tokens at T = 1 in numpy and torch calls,
// most of a sampled step's time outside the model forwards. Here a row costs two passes (the maximum, then the
// weights with their block sums) and one masked-sum pass per nucleus question; as in Python, the nucleus itself
// is built only when the bounds leave a decision open (target_law.py says why each bound holds). The caller
// supplies the uniform numbers, in the order Python draws them (nodes + 8 always suffice: one per tested child,
// at most 2 x DRAW_ATTEMPTS + 1 for the bonus token).
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "evospec/drafter.hpp"
#include "row_kernels.hpp"
#include "verify.hpp"
namespace evospec::detail {

namespace {

constexpr double SUM_SLACK = 1e-9;  // of a row's total: two float64 sums of it in different orders differ by less
constexpr int DRAW_ATTEMPTS = 3;    // proposals from the softmax before the bonus is drawn from the exact law
enum Answer { NO = 0, YES = 1, UNKNOWN = -1 };

struct Uniforms {
  const double* values;
  int64_t count, used = 0;
  double next() {
    if (used >= count)
      throw SettingsError("verification needs more than the " + std::to_string(count) + " uniforms given");
    double u = values[used++];
    if (!(u >= 0.0 && u < 1.0)) throw SettingsError("a uniform outside [0, 1): " + std::to_string(u));
    return u;
  }
};

// The drafter's law at one child: a point mass at its token (laws == nullptr), q over the vocabulary
// (columns == nullptr) or q over the head's columns (a padded set repeats id 0 with q = 0: columns add up).
struct Proposal {
  int64_t token;
  const double* q;
  const int64_t* columns;
  int64_t width;

  double mass(int64_t y) const {
    if (q == nullptr) return y == token ? 1.0 : 0.0;
    if (columns == nullptr) return q[y];
    return column_mass(columns, q, width, y);
  }

  // w <- max(w - total q, 0), in place (the residual after this child's rejection), in float32 as Python's
  // numpy and index_add_ compute it (q is a float32 law; the total rounds to float32 first).
  void subtract(std::vector<float>& w, double total) const {
    const float k = static_cast<float>(total);
    if (q == nullptr) {
      w[token] = 0.0f;
    } else if (columns == nullptr) {
      for (size_t v = 0; v < w.size(); ++v) w[v] = std::max(w[v] - static_cast<float>(q[v]) * k, 0.0f);
    } else {
      for (int64_t c = 0; c < width; ++c) w[columns[c]] += -k * static_cast<float>(q[c]);
      for (int64_t c = 0; c < width; ++c) w[columns[c]] = std::max(w[columns[c]], 0.0f);
    }
  }
};

// Python's TargetRow: the softmax first, the nucleus only when a decision needs it.
class TargetRow {
 public:
  double total;  // of the softmax; once the weights are built, of the law (kept in step by the caller)

  TargetRow(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p)
      : w_(row_scratch().w), cumulative_(row_scratch().blocks) {
    RowScratch& s = row_scratch();
    scaled_ = logits;
    if (stride != 1 || temperature != 1.0) {  // contiguous, divided as numpy divides float32 by a Python float
      s.scaled.resize(vocab);
      const float t = static_cast<float>(temperature);
      if (temperature == 1.0)
        for (int64_t v = 0; v < vocab; ++v) s.scaled[v] = logits[v * stride];
      else
        for (int64_t v = 0; v < vocab; ++v) s.scaled[v] = logits[v * stride] / t;
      scaled_ = s.scaled.data();
    }
    exp_weights(scaled_, vocab, w_, cumulative_);
    total = cumulative_.back();
    budget_ = 1.0 - top_p;
    filtered_ = top_p >= 1.0;
    limit_ = budget_ * total;
    margin_ = SUM_SLACK * total;
    kept_high_ = total + margin_;
    kept_low_ = total - limit_ - 2 * margin_;
  }

  // The exact test threshold K < w(x) on the untouched law, or UNKNOWN where the bounds do not settle it.
  Answer decide(int64_t x, double threshold) {
    if (filtered_) return threshold * weights_total() < w_[x] ? YES : NO;
    Answer kept = in_nucleus(x);
    if (kept == NO) return NO;
    if (kept == YES) {
      const double s = w_[x];
      if (threshold * kept_high_ < s) return YES;
      if (threshold * kept_low_ >= s) return NO;
    }
    return UNKNOWN;
  }

  // One token from the law, or, after ``rejected`` (tested against the untouched law) was rejected, from the
  // residual max(w - K q, 0): by rejection from the softmax while the bounds decide, else from the exact law.
  int64_t draw(Uniforms& u, const Proposal* rejected) {
    if (!filtered_) {
      for (int attempt = 0; attempt < DRAW_ATTEMPTS; ++attempt) {
        const int64_t y = draw_blocks(w_, cumulative_, u.next());
        const double v = u.next(), q = rejected == nullptr ? 0.0 : rejected->mass(y);
        Answer keep = keeps_draw(y, v, q);
        if (keep == UNKNOWN) {  // settled on the exact law for this proposal (a fresh draw would bias the law)
          const double s = w_[y];
          weights();
          if (v * s < std::max(static_cast<double>(w_[y]) - total * q, 0.0)) return y;
          break;
        }
        if (keep == YES) return y;
      }
    }
    weights();
    if (rejected != nullptr) rejected->subtract(w_, total);
    return sample(u);
  }

  // The law's weights (the nucleus built in place: the softmax is not read again); ``total`` becomes their sum.
  std::vector<float>& weights() {
    if (!filtered_) {
      total = nucleus(w_, scaled_, budget_, total);
      filtered_ = true;
    }
    return w_;
  }

  // One token from the weights as they are (residuals included).
  int64_t sample(Uniforms& u) {
    block_cumulative(w_, row_scratch().fresh_blocks);
    return draw_blocks(w_, row_scratch().fresh_blocks, u.next());
  }

 private:
  double weights_total() {
    weights();
    return total;
  }

  Answer keeps_draw(int64_t y, double v, double q) {
    Answer kept = in_nucleus(y);
    if (kept != YES) return kept;
    const double s = w_[y];
    if (v * s < s - kept_high_ * q) return YES;
    if (v * s >= s - kept_low_ * q) return NO;
    return UNKNOWN;
  }

  // Kept when the mass of y and every token below it exceeds the limit (ties: between below + s and
  // below + ties x s); each answer also settles every token more likely (kept) or less likely (removed).
  Answer in_nucleus(int64_t y) {
    const float s = w_[y];
    if (s > kept_from_ || s > limit_ + margin_) return kept(s);
    if (s < removed_below_) return NO;
    double below = 0.0;
    int64_t ties = 0;
    mass_below(s, below, ties);
    if (below + s > limit_ + margin_) return kept(s);
    if (below + static_cast<double>(ties) * s < limit_ - margin_) {
      removed_below_ = std::max(removed_below_, static_cast<double>(s));
      return NO;
    }
    return UNKNOWN;
  }

  Answer kept(double s) {
    if (s < kept_from_) {
      kept_from_ = s;
      kept_high_ = std::min(kept_high_, total - limit_ + s + 3 * margin_);
    }
    return YES;
  }

  void mass_below(float s, double& below, int64_t& ties) const {
    detail::mass_below(w_.data(), static_cast<int64_t>(w_.size()), s, below, ties);
  }

  std::vector<float>& w_;  // the softmax, then the law's weights
  std::vector<double>& cumulative_;  // the softmax's block sums
  const float* scaled_;
  double budget_, limit_, margin_, kept_high_, kept_low_;
  double kept_from_ = std::numeric_limits<double>::infinity();
  double removed_below_ = -std::numeric_limits<double>::infinity();
  bool filtered_;
};

}  // namespace

double sampling_weights(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p,
                        float* weights) {
  TargetRow row(logits, vocab, stride, temperature, top_p);
  const std::vector<float>& w = row.weights();
  std::copy(w.begin(), w.end(), weights);
  return top_p >= 1.0 ? total_of(w) : row.total;
}

SampledVerdict verify_sampled(const SampledStep& step) {
  const int64_t n = step.nodes;
  std::vector<std::vector<int64_t>> children(n + 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t parent = step.parents[i];
    if (parent < -1 || parent >= i)
      throw SettingsError("node " + std::to_string(i) + " has parent " + std::to_string(parent) +
                          " (a parent comes before its child)");
    if (step.tokens[i] < 0 || step.tokens[i] >= step.vocab)
      throw SettingsError("node " + std::to_string(i) + " drafts token " + std::to_string(step.tokens[i]) +
                          ", outside the target's vocabulary of " + std::to_string(step.vocab));
    children[parent + 1].push_back(i);
  }
  if (step.laws != nullptr && step.columns != nullptr)
    for (int64_t c = 0; c < step.law_columns; ++c)
      if (step.columns[c] < 0 || step.columns[c] >= step.vocab)
        throw SettingsError("law column " + std::to_string(c) + " is token " + std::to_string(step.columns[c]) +
                            ", outside the target's vocabulary");
  Uniforms u{step.uniforms, step.uniform_count};
  SampledVerdict verdict;
  int64_t row = 0;
  while (true) {
    TargetRow law(step.logits + row * step.row_stride, step.vocab, step.vocab_stride, step.temperature, step.top_p);
    const std::vector<int64_t>& kids = children[row];
    int64_t taken = -1;
    for (size_t index = 0; index < kids.size() && taken < 0; ++index) {
      const int64_t child = kids[index], x = step.tokens[child];
      const Proposal proposal{x, step.laws == nullptr ? nullptr : step.laws + child * step.law_columns, step.columns,
                              step.law_columns};
      const double threshold = u.next() * proposal.mass(x);
      if (index == 0) {  // the untouched law: the bounds may decide without the nucleus
        Answer decided = law.decide(x, threshold);
        if (decided == YES) {
          taken = child;
          break;
        }
        if (decided == NO && kids.size() == 1) {
          verdict.bonus = law.draw(u, &proposal);
          verdict.uniforms_used = u.used;
          return verdict;
        }
      }
      std::vector<float>& w = law.weights();
      if (threshold * law.total < w[x]) {
        taken = child;
        break;
      }
      proposal.subtract(w, law.total);
      law.total = total_of(w);
      if (!(law.total > 0)) throw std::runtime_error("speculative sampling residual has no mass; this is a bug");
    }
    if (taken < 0) {
      verdict.bonus = kids.empty() ? law.draw(u, nullptr) : law.sample(u);
      verdict.uniforms_used = u.used;
      return verdict;
    }
    verdict.accepted.push_back(taken);
    row = taken + 1;
  }
}

}  // namespace evospec::detail
