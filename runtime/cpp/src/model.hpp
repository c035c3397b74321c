// The drafter's arithmetic in libtorch: the fuse, trunk and resident-head stages of
// runtime/stages.py, op for op, so that CPU results equal the Python runtime's bit for bit (same
// ATen kernels, same shapes, same order of operations; tests/test_cpp.py compares draft trees).
//
// Weights come from the bundle's drafter copy (``drafter/model.safetensors``, official EAGLE-3
// layout) and its ``drafter/config.json``; token embeddings from the drafter when it has its own,
// else from the target directory (EAGLE-3 drafters share the target's table).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace evospec::detail {

struct ModelConfig {
  int64_t hidden_size = 0, target_hidden_size = 0, intermediate_size = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t vocab_size = 0, draft_vocab_size = 0;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0;
  bool norm_before_residual = false;
};

struct TrunkOut {
  at::Tensor hidden;      // [B, T, d] pre-norm state fed back at the next depth
  at::Tensor normed;      // [B, T, d] head input
  at::Tensor new_keys;    // [B, Hkv, T, hd]
  at::Tensor new_values;  // [B, Hkv, T, hd]
};

class Model {
 public:
  // Reads ``drafter_dir``; ``target_dir`` (may be empty) supplies embeddings a drafter lacks.
  // Throws evospec::BundleError / SettingsError with the file at fault.
  Model(const std::string& drafter_dir, const std::string& target_dir);

  const ModelConfig& config() const { return c_; }
  const at::Tensor& d2t() const { return d2t_; }

  at::Tensor fuse(const at::Tensor& features) const;  // [B, T, 3*Dt] -> [B, T, d]
  at::Tensor embed(const at::Tensor& target_ids) const;  // [B, T] -> [B, T, d] float32
  // TrunkStage.forward: past [B, Hkv, P, hd], mask [T, P+T] bool.
  TrunkOut trunk(const at::Tensor& hidden, const at::Tensor& embeds, const at::Tensor& positions,
                 const at::Tensor& past_keys, const at::Tensor& past_values, const at::Tensor& mask) const;
  // The weight the stages call ``name`` (FuseStage/TrunkStage parameter names), or nullptr.
  at::Tensor* weight(const std::string& name);

 private:
  ModelConfig c_;
  at::Tensor fc_, hidden_norm_, input_norm_, post_norm_, final_norm_;
  at::Tensor q_, k_, v_, o_, gate_, up_, down_;
  at::Tensor embeddings_, d2t_, inv_freq_;

  at::Tensor rms(const at::Tensor& x, const at::Tensor& weight) const;
};

}  // namespace evospec::detail
