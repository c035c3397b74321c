// Compiled without torch's include paths (CMake target evospec_header_check): the public header
// must need only the C++17 standard library, so a service builds against it without libtorch's headers.
#include "evospec/drafter.hpp"

namespace {
[[maybe_unused]] evospec::DraftSettings chain = evospec::DraftSettings::chain(5);
}  // namespace
