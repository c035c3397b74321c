// Python's RefreshGate (runtime/vocab/refresh_gate.py): a greedy sequence's routed set is chosen again only after
// the target committed a token outside the set the drafter used, or every ``gap`` cycles; in between the last set
// stays and the caller skips its plan update (``route_kept``), once ``hold`` cycles in a row committed no token
// outside their sets. Sampled sequences route every cycle.
#include "policy.hpp"

namespace evospec::detail {
namespace {

class RefreshGate : public Policy {
 public:
  RefreshGate(std::unique_ptr<Policy> inner, int64_t gap, int64_t hold) : inner_(std::move(inner)), gap_(gap), hold_(hold) {
    if (gap < 1 || hold < 0)
      throw SettingsError("refresh_gap must be >= 1 cycle and refresh_hold >= 0 (got " + std::to_string(gap) + ", " +
                          std::to_string(hold) + ")");
  }
  void decoding(bool greedy) override {
    greedy_ = greedy;
    inner_->decoding(greedy);
  }
  void reset(const std::vector<int64_t>& prompt) override {
    inner_->reset(prompt);
    last_.clear();
    members_.clear();
    since_ = held_ = 0;
    missed_ = true;
    kept_ = false;
  }
  void observe(const std::vector<int64_t>& committed, const at::Tensor& state) override {
    if (!last_.empty() && !committed.empty()) {
      bool miss = false;
      for (int64_t t : committed)
        if (t < 0 || t >= static_cast<int64_t>(members_.size()) || !members_[t]) {
          miss = true;
          break;
        }
      missed_ = missed_ || miss;
      held_ = miss ? 0 : held_ + 1;
    }
    inner_->observe(committed, state);
  }
  bool routed() const override { return inner_->routed(); }
  std::vector<int64_t> route(const at::Tensor& state) override {
    ++since_;
    kept_ = greedy_ && gap_ > 1 && !last_.empty() && !missed_ && since_ < gap_ && held_ >= hold_;
    if (kept_) return last_;
    last_ = inner_->route(state);
    members_ = membership(last_);
    since_ = 0;
    missed_ = false;
    return last_;
  }
  bool route_kept() const override { return kept_; }
  std::vector<int64_t> active_ids() override { return inner_->active_ids(); }
  void served(const std::vector<int64_t>& active) override { inner_->served(active); }
  bool patches_fresh() const override { return inner_->patches_fresh(); }
  int64_t fill_start() const override { return inner_->fill_start(); }
  std::vector<int64_t> kept_ids() override { return inner_->kept_ids(); }
  std::vector<int64_t> fresh(const std::vector<int64_t>& committed) const override { return inner_->fresh(committed); }
  int64_t tail_size() const override { return inner_->tail_size(); }
  int64_t core_size() const override { return inner_->core_size(); }
  void start_pending() override { inner_->start_pending(); }

 private:
  std::unique_ptr<Policy> inner_;
  int64_t gap_, hold_;
  bool greedy_ = false, missed_ = true, kept_ = false;
  int64_t since_ = 0, held_ = 0;  // cycles since the last route; cycles in a row without a miss
  std::vector<int64_t> last_;   // the set the last route chose
  std::vector<uint8_t> members_;  // membership of last_ over 0..max(last_), for the miss test
};

}  // namespace

std::unique_ptr<Policy> make_refresh_gate(std::unique_ptr<Policy> inner, int64_t gap, int64_t hold) {
  if (gap == 1) return inner;
  return std::make_unique<RefreshGate>(std::move(inner), gap, hold);
}

}  // namespace evospec::detail
