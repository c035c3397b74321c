// The bundle's semantic index through USearch's C++ API (runtime/vocab/semantic.py).
//
// Python's usearch saved the index (``index/semantic.usearch``); USearch's header-only C++ loads
// the same file. The query is the drafter state projected onto the bundle's projection, as in
// Python, searched approximately with the index's own settings (exact=False, as Python searches).
// Without the headers (EVOSPEC_WITH_USEARCH off) the library builds without semantic retrieval
// and says so when a bundle's policy would need it.
#include <filesystem>

#include "evospec/drafter.hpp"
#include "policy.hpp"
#include "safetensors.hpp"

#if EVOSPEC_WITH_USEARCH
#include <usearch/index_dense.hpp>
#endif

namespace evospec::detail {

namespace fs = std::filesystem;

bool semantic_index_available() { return EVOSPEC_WITH_USEARCH != 0; }

#if EVOSPEC_WITH_USEARCH

namespace {

using unum::usearch::index_dense_t;

class UsearchIndex : public SemanticIndex {
 public:
  UsearchIndex(index_dense_t index, at::Tensor projection) : index_(std::move(index)), projection_(std::move(projection)) {}

  std::vector<int64_t> query(const at::Tensor& state, int64_t count) const override {
    at::Tensor q = at::matmul(state.to(at::kFloat).reshape({1, -1}), projection_).contiguous();  // [1, r]
    auto result = index_.search(q.data_ptr<float>(), static_cast<size_t>(count));
    if (!result) throw std::runtime_error(std::string("semantic index search failed: ") + result.error.what());
    std::vector<index_dense_t::vector_key_t> keys(result.count);
    result.dump_to(keys.data(), keys.size());
    return std::vector<int64_t>(keys.begin(), keys.end());
  }

 private:
  index_dense_t index_;
  at::Tensor projection_;
};

}  // namespace

std::unique_ptr<SemanticIndex> load_semantic_index(const std::string& bundle, int64_t vocab_size, int64_t hidden_size) {
  std::string index_path = (fs::path(bundle) / "index/semantic.usearch").string();
  std::string proj_path = (fs::path(bundle) / "index/projection.safetensors").string();
  for (const std::string& path : {index_path, proj_path})
    if (!fs::is_regular_file(path)) throw BundleError(path + " is missing; recompile the bundle with `evospec compile`");
  at::Tensor proj;
  try {
    proj = load_safetensors(proj_path).at("projection").to(at::kFloat).contiguous();
  } catch (const std::exception& e) {
    throw BundleError(proj_path + " is not a readable projection (" + e.what() + ")");
  }
  auto made = index_dense_t::make(index_path.c_str());
  if (!made) throw BundleError(index_path + " is not a readable USearch index (" + made.error.what() + ")");
  index_dense_t index = std::move(made.index);
  if (proj.dim() != 2 || proj.size(0) != hidden_size || static_cast<int64_t>(index.dimensions()) != proj.size(1))
    throw BundleError(index_path + ": index of dimension " + std::to_string(index.dimensions()) +
                      " does not fit a drafter of width " + std::to_string(hidden_size));
  if (static_cast<int64_t>(index.size()) != vocab_size)
    throw BundleError(index_path + " indexes " + std::to_string(index.size()) + " rows but the reservoir has " +
                      std::to_string(vocab_size));
  return std::make_unique<UsearchIndex>(std::move(index), proj);
}

#else

std::unique_ptr<SemanticIndex> load_semantic_index(const std::string&, int64_t, int64_t) { return nullptr; }

#endif

}  // namespace evospec::detail
