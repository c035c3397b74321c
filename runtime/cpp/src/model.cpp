#include "model.hpp"

#include <cmath>
#include <filesystem>
#include <map>

#include "evospec/drafter.hpp"
#include "json.hpp"
#include "safetensors.hpp"

namespace evospec::detail {

namespace fs = std::filesystem;

namespace {

at::Tensor take(std::map<std::string, at::Tensor>& w, const std::string& name, const std::string& file) {
  auto it = w.find(name);
  if (it == w.end()) throw BundleError(file + " has no weight '" + name + "'; recompile the bundle with `evospec compile`");
  return it->second.to(at::kFloat).contiguous();
}

// The target's token embeddings (HF layout: one file or shards listed by an index), as float32.
at::Tensor target_embeddings(const std::string& target_dir) {
  const std::string key = "model.embed_tokens.weight";
  fs::path dir(target_dir);
  fs::path file = dir / "model.safetensors";
  if (fs::is_regular_file(dir / "model.safetensors.index.json")) {
    json::Value index = json::parse_file((dir / "model.safetensors.index.json").string());
    if (!index.at("weight_map").has(key))
      throw SettingsError("target " + target_dir + " has no " + key + " in its weight map");
    file = dir / index.at("weight_map").at(key).as_string();
  }
  if (!fs::is_regular_file(file))
    throw SettingsError("the drafter has no embeddings of its own and target " + target_dir +
                        " has no model.safetensors to read them from (pass DrafterOptions::target_dir)");
  auto weights = load_safetensors(file.string());
  auto it = weights.find(key);
  if (it == weights.end()) throw SettingsError(file.string() + " has no " + key);
  return it->second.to(at::kFloat).contiguous();
}

int64_t get_int(const json::Value& cfg, const std::string& key, int64_t fallback) {
  return cfg.has(key) && !cfg.at(key).is_null() ? cfg.at(key).as_int() : fallback;
}

}  // namespace

Model::Model(const std::string& drafter_dir, const std::string& target_dir) {
  std::string config_path = (fs::path(drafter_dir) / "config.json").string();
  std::string weights_path = (fs::path(drafter_dir) / "model.safetensors").string();
  json::Value cfg;
  try {
    cfg = json::parse_file(config_path);
    c_.hidden_size = cfg.at("hidden_size").as_int();
    c_.target_hidden_size = get_int(cfg, "target_hidden_size", c_.hidden_size);
    c_.intermediate_size = cfg.at("intermediate_size").as_int();
    c_.num_heads = cfg.at("num_attention_heads").as_int();
    c_.num_kv_heads = get_int(cfg, "num_key_value_heads", c_.num_heads);
    c_.head_dim = get_int(cfg, "head_dim", c_.hidden_size / c_.num_heads);
    c_.vocab_size = cfg.at("vocab_size").as_int();
    c_.draft_vocab_size = get_int(cfg, "draft_vocab_size", c_.vocab_size);
    c_.rms_norm_eps = cfg.has("rms_norm_eps") ? cfg.at("rms_norm_eps").as_double() : 1e-6;
    c_.norm_before_residual = cfg.has("norm_before_residual") && cfg.at("norm_before_residual").boolean;
    const json::Value* rope = cfg.has("rope_parameters") && !cfg.at("rope_parameters").is_null() ? &cfg.at("rope_parameters") : nullptr;
    if (rope && rope->has("rope_theta")) c_.rope_theta = rope->at("rope_theta").as_double();
    else if (cfg.has("rope_theta")) c_.rope_theta = cfg.at("rope_theta").as_double();
    std::string rope_type = "default";
    if (rope && rope->has("rope_type")) rope_type = rope->at("rope_type").as_string();
    if (cfg.has("rope_scaling") && !cfg.at("rope_scaling").is_null()) {
      const auto& scaling = cfg.at("rope_scaling");
      rope_type = scaling.has("rope_type") ? scaling.at("rope_type").as_string()
                                           : scaling.has("type") ? scaling.at("type").as_string() : "scaled";
    }
    if (rope_type != "default")
      throw SettingsError(config_path + ": RoPE type '" + rope_type +
                          "' is not implemented by the C++ drafter (default RoPE only); use the Python runtime");
  } catch (const SettingsError&) {
    throw;
  } catch (const std::exception& e) {
    throw BundleError(config_path + " is not a readable drafter config (" + e.what() + "); recompile the bundle with `evospec compile`");
  }

  std::map<std::string, at::Tensor> w;
  try {
    w = load_safetensors(weights_path);
  } catch (const std::exception& e) {
    throw BundleError(std::string(e.what()) + "; recompile the bundle with `evospec compile`");
  }
  fc_ = take(w, "fc.weight", weights_path);
  hidden_norm_ = take(w, "midlayer.hidden_norm.weight", weights_path);
  input_norm_ = take(w, "midlayer.input_layernorm.weight", weights_path);
  post_norm_ = take(w, "midlayer.post_attention_layernorm.weight", weights_path);
  final_norm_ = take(w, "norm.weight", weights_path);
  q_ = take(w, "midlayer.self_attn.q_proj.weight", weights_path);
  k_ = take(w, "midlayer.self_attn.k_proj.weight", weights_path);
  v_ = take(w, "midlayer.self_attn.v_proj.weight", weights_path);
  o_ = take(w, "midlayer.self_attn.o_proj.weight", weights_path);
  gate_ = take(w, "midlayer.mlp.gate_proj.weight", weights_path);
  up_ = take(w, "midlayer.mlp.up_proj.weight", weights_path);
  down_ = take(w, "midlayer.mlp.down_proj.weight", weights_path);
  auto d2t = w.find("d2t");
  d2t_ = d2t != w.end() ? d2t->second.to(at::kLong) : at::zeros({c_.draft_vocab_size}, at::kLong);
  auto own = w.find("embed_tokens.weight");
  embeddings_ = own != w.end() ? own->second.to(at::kFloat).contiguous() : target_embeddings(target_dir);
  if (embeddings_.size(0) < c_.vocab_size || embeddings_.size(1) != c_.hidden_size)
    throw SettingsError("token embeddings of shape [" + std::to_string(embeddings_.size(0)) + ", " +
                        std::to_string(embeddings_.size(1)) + "] do not fit a drafter of vocabulary " +
                        std::to_string(c_.vocab_size) + " and width " + std::to_string(c_.hidden_size));
  embeddings_ = embeddings_.narrow(0, 0, c_.vocab_size).contiguous();
  // transformers' default RoPE: 1 / theta ** (arange(0, hd, 2) / hd), in float32 (Tensor.__rtruediv__
  // is reciprocal() * 1.0, spelled out so the bits equal Python's).
  at::Tensor exponent = at::arange(0, c_.head_dim, 2, at::kFloat) / c_.head_dim;
  inv_freq_ = at::pow(c_.rope_theta, exponent).reciprocal() * 1.0;
}

at::Tensor Model::rms(const at::Tensor& x, const at::Tensor& weight) const {
  at::Tensor x32 = x.to(at::kFloat);
  x32 = x32 * at::rsqrt(x32.pow(2).mean(-1, true) + c_.rms_norm_eps);
  return weight * x32;
}

at::Tensor Model::fuse(const at::Tensor& features) const { return at::linear(features, fc_); }

at::Tensor Model::embed(const at::Tensor& target_ids) const { return at::embedding(embeddings_, target_ids); }

TrunkOut Model::trunk(const at::Tensor& hidden, const at::Tensor& embeds, const at::Tensor& positions,
                      const at::Tensor& past_keys, const at::Tensor& past_values, const at::Tensor& mask) const {
  // DecoderLayer.attention_input
  at::Tensor normed_hidden = rms(hidden, hidden_norm_);
  at::Tensor residual = c_.norm_before_residual ? normed_hidden : hidden;
  at::Tensor x = at::cat({rms(embeds, input_norm_), normed_hidden}, -1);
  // TrunkStage.rope
  at::Tensor freqs = positions.unsqueeze(-1).to(at::kFloat) * inv_freq_;
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = (emb.cos() * 1.0).unsqueeze(1), sin = (emb.sin() * 1.0).unsqueeze(1);
  // Attention.qkv
  int64_t b = x.size(0), t = x.size(1), hd = c_.head_dim;
  auto rotate_half = [](const at::Tensor& y) {
    auto halves = y.chunk(2, -1);
    return at::cat({-halves[1], halves[0]}, -1);
  };
  at::Tensor q = at::linear(x, q_).view({b, t, c_.num_heads, hd}).transpose(1, 2);
  at::Tensor k = at::linear(x, k_).view({b, t, c_.num_kv_heads, hd}).transpose(1, 2);
  at::Tensor v = at::linear(x, v_).view({b, t, c_.num_kv_heads, hd}).transpose(1, 2);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  // TrunkStage.forward's attention, spelled out as the exporters see it
  at::Tensor keys = at::cat({past_keys, k}, 2), values = at::cat({past_values, v}, 2);
  if (c_.num_heads != c_.num_kv_heads) {
    keys = keys.repeat_interleave(c_.num_heads / c_.num_kv_heads, 1);
    values = values.repeat_interleave(c_.num_heads / c_.num_kv_heads, 1);
  }
  at::Tensor scores = at::matmul(q, keys.transpose(-1, -2)) / std::pow(static_cast<double>(hd), 0.5);
  scores = scores.masked_fill(mask.logical_not(), -INFINITY);
  at::Tensor out = at::matmul(at::softmax(scores.to(at::kFloat), -1), values);
  // Attention.output, DecoderLayer.finish
  at::Tensor attended = at::linear(out.transpose(1, 2).reshape({b, t, c_.num_heads * hd}), o_);
  at::Tensor h = residual + attended;
  at::Tensor mlp_in = rms(h, post_norm_);
  h = h + at::linear(at::silu(at::linear(mlp_in, gate_)) * at::linear(mlp_in, up_), down_);
  return {h, rms(h, final_norm_), k, v};
}

at::Tensor* Model::weight(const std::string& name) {
  const std::map<std::string, at::Tensor*> names{
      {"fc.weight", &fc_}, {"norm.weight", &final_norm_}, {"layer.hidden_norm.weight", &hidden_norm_},
      {"layer.input_layernorm.weight", &input_norm_}, {"layer.post_attention_layernorm.weight", &post_norm_},
      {"layer.self_attn.q_proj.weight", &q_}, {"layer.self_attn.k_proj.weight", &k_},
      {"layer.self_attn.v_proj.weight", &v_}, {"layer.self_attn.o_proj.weight", &o_},
      {"layer.mlp.gate_proj.weight", &gate_}, {"layer.mlp.up_proj.weight", &up_}, {"layer.mlp.down_proj.weight", &down_}};
  auto it = names.find(name);
  return it == names.end() ? nullptr : it->second;
}

}  // namespace evospec::detail
