#include "bundle.hpp"

#include <filesystem>
#include <vector>

#include "evospec/drafter.hpp"
#include "sha256.hpp"

namespace evospec::detail {

namespace fs = std::filesystem;

constexpr int64_t BUNDLE_FORMAT = 2;  // runtime/bundle.py: the format `evospec compile` writes

namespace {

std::string recompile(const std::string& bundle) {
  return "recompile with `evospec compile --target DIR --drafter DIR --out " + bundle + "`";
}

// Python's repr of a JSON value as manifest.get('format') would give it.
std::string python_repr(const json::Value* v) {
  if (v == nullptr || v->is_null()) return "None";
  switch (v->kind) {
    case json::Value::Kind::Bool: return v->boolean ? "True" : "False";
    case json::Value::Kind::Number: {
      if (v->is_integer) return std::to_string(v->integer);
      std::string s = std::to_string(v->number);
      return s;
    }
    case json::Value::Kind::String: return "'" + v->string + "'";
    default: return "<" + std::string(v->kind == json::Value::Kind::Array ? "list" : "dict") + ">";
  }
}

}  // namespace

std::string normalise_path(const std::string& path) {
  if (path.empty()) return ".";
  bool absolute = path[0] == '/';
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string part = path.substr(i, j - i);
    if (!part.empty() && part != ".") parts.push_back(part);
    i = j + 1;
  }
  std::string out = absolute ? "/" : "";
  for (size_t k = 0; k < parts.size(); ++k) out += (k ? "/" : "") + parts[k];
  return out.empty() ? "." : out;
}

json::Value read_manifest(const std::string& bundle_in) {
  std::string bundle = normalise_path(bundle_in);
  std::string path = bundle == "." ? "manifest.json" : bundle + "/manifest.json";
  if (!fs::is_directory(bundle)) throw BundleError("bundle " + bundle + " does not exist");
  if (!fs::exists(path))
    throw BundleError(bundle + " is not a bundle: manifest.json is missing; " + recompile(bundle));
  json::Value manifest;
  try {
    manifest = json::parse_file(path);
  } catch (const std::exception& e) {
    // Python quotes json's own message here; the C++ parser's wording differs after "is not valid JSON".
    throw BundleError(path + " is not valid JSON (" + e.what() + "); " + recompile(bundle));
  }
  const json::Value* format = manifest.has("format") ? &manifest.at("format") : nullptr;
  if (format == nullptr || !format->is_integer || format->integer != BUNDLE_FORMAT)
    throw BundleError(bundle + " has bundle format " + python_repr(format) + "; this evospec reads format " +
                      std::to_string(BUNDLE_FORMAT) + "; " + recompile(bundle));
  return manifest;
}

void check_files(const std::string& bundle_in, const json::Value& manifest) {
  std::string bundle = normalise_path(bundle_in);
  if (!manifest.has("files")) return;
  for (const auto& [name, expected] : manifest.at("files").object) {
    std::string path = normalise_path(bundle + "/" + name);
    if (!fs::is_regular_file(path)) throw BundleError(path + " is missing from the bundle; " + recompile(bundle));
    int64_t size = static_cast<int64_t>(fs::file_size(path));
    int64_t want = expected.at("bytes").as_int();
    if (size != want)
      throw BundleError(path + " is truncated or altered (" + std::to_string(size) + " bytes, expected " +
                        std::to_string(want) + "); " + recompile(bundle));
    if (sha256_file(path) != expected.at("sha256").as_string())
      throw BundleError(path + " was altered after compiling (sha256 differs); " + recompile(bundle));
  }
}

}  // namespace evospec::detail
