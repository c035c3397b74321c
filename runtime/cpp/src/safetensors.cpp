#include "safetensors.hpp"

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "json.hpp"

namespace evospec {

namespace {

at::ScalarType dtype_of(const std::string& name, const std::string& path) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  if (name == "F64") return at::kDouble;
  if (name == "I64") return at::kLong;
  if (name == "I32") return at::kInt;
  if (name == "BOOL") return at::kBool;
  if (name == "U8") return at::kByte;
  throw std::runtime_error(path + ": unsupported safetensors dtype " + name);
}

}  // namespace

std::map<std::string, at::Tensor> load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) throw std::runtime_error(path + " is not a safetensors file (shorter than its header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (8 + header_len > bytes.size()) throw std::runtime_error(path + " is not a safetensors file (header past the end)");
  json::Value header;
  try {
    header = json::parse(std::string(bytes.data() + 8, header_len));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + " has an unreadable safetensors header (" + e.what() + ")");
  }
  const char* data = bytes.data() + 8 + header_len;
  size_t data_len = bytes.size() - 8 - header_len;
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, info] : header.object) {
    if (name == "__metadata__") {
      if (metadata != nullptr)
        for (const auto& [key, value] : info.object)
          if (value.kind == json::Value::Kind::String) (*metadata)[key] = value.string;
      continue;
    }
    at::ScalarType dtype = dtype_of(info.at("dtype").as_string(), path);
    std::vector<int64_t> shape;
    for (const auto& d : info.at("shape").array) shape.push_back(d.as_int());
    int64_t begin = info.at("data_offsets").at(0).as_int(), end = info.at("data_offsets").at(1).as_int();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (begin < 0 || end < begin || static_cast<size_t>(end) > data_len || static_cast<size_t>(end - begin) != nbytes)
      throw std::runtime_error(path + ": tensor '" + name + "' has byte range [" + std::to_string(begin) + ", " +
                               std::to_string(end) + ") that does not fit its shape or the file");
    if (nbytes) std::memcpy(t.data_ptr(), data + begin, nbytes);
    tensors.emplace(name, t);
  }
  return tensors;
}

}  // namespace evospec
