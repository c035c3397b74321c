// Read a .safetensors file into ATen tensors (the bundle's drafter weights, reservoir rows,
// semantic projection, and a recording's target features).
//
// The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the raw data. Tensors are copied out, so the file is not kept open.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>

namespace evospec {

// Every tensor of the file by name; throws std::runtime_error naming the file and what is wrong.
// ``metadata``, when given, receives the header's ``__metadata__`` strings.
std::map<std::string, at::Tensor> load_safetensors(const std::string& path,
                                                   std::map<std::string, std::string>* metadata = nullptr);

}  // namespace evospec
