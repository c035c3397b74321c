// Opening a bundle: the manifest and file checks of runtime/bundle.py, with the same one-line
// BundleError messages (a service's logs then read the same whichever runtime it embeds).
#pragma once

#include <string>

#include "json.hpp"

namespace evospec::detail {

// The bundle path as Python's pathlib prints it ("a//b/" -> "a/b", "./a" -> "a").
std::string normalise_path(const std::string& path);
// read_manifest: missing directory, no manifest, invalid JSON, another format.
json::Value read_manifest(const std::string& bundle);
// check_files: every listed file present, of its recorded size and sha256.
void check_files(const std::string& bundle, const json::Value& manifest);

}  // namespace evospec::detail
