// A minimal JSON reader: what a bundle's manifest, a frequency file and a recording need.
//
// Why not a library: no JSON library ships with the toolchains these machines install (no
// nlohmann-json package, no network at build time), and the library must build from the torch
// wheel and the compiler alone. Numbers are kept as double and, when integral, as int64 too, so
// 64-bit token ids and byte counts round-trip exactly.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace evospec::json {

class Value {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  int64_t integer = 0;
  bool is_integer = false;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  bool is_null() const { return kind == Kind::Null; }
  bool has(const std::string& key) const { return kind == Kind::Object && object.count(key) > 0; }
  // Member access that throws std::runtime_error naming the missing key or wrong kind.
  const Value& at(const std::string& key) const;
  const Value& at(size_t index) const;
  int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;
};

// Parse ``text``; throws std::runtime_error("... at offset N") on malformed input.
Value parse(const std::string& text);
// Read and parse a file; throws std::runtime_error naming the file when it is unreadable or malformed.
Value parse_file(const std::string& path);
// Escape a string for writing JSON output.
std::string quote(const std::string& s);

}  // namespace evospec::json
