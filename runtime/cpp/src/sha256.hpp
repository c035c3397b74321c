// SHA-256 of a file, as the bundle's manifest records it (hex digest; runtime/files.py).
//
// Written out here (FIPS 180-4) rather than linked from OpenSSL: the library must build from the
// torch wheel and the compiler alone, and a bundle check hashes a few files once at open time.
#pragma once

#include <string>

namespace evospec {

// Lower-case hex SHA-256 of the file at ``path``; throws std::runtime_error when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace evospec
