#pragma once
// safetensors I/O: memory-mapped reading of single files and sharded checkpoints, and atomic
// writing. Format: 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}}), then the
// data; offsets are relative to byte 8 + N, contiguous, C order, little endian.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "consa/core/mapped_file.h"

namespace consa {

struct TensorRecord {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section, end exclusive
  uint64_t end = 0;
};

// One .safetensors file, mapped read-only. Every structural problem is refused at open() with
// a one-line consa::Error naming the file (and the tensor, where there is one).
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return records_.count(name) != 0; }
  const TensorRecord& record(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A CPU tensor viewing the mapped bytes (no copy); it keeps the mapping alive.
  at::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorRecord> records_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a Hugging Face checkpoint directory: model.safetensors, or the shards listed
// by model.safetensors.index.json. All files are opened (and validated) up front.
class CheckpointTensors {
 public:
  static CheckpointTensors open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  at::Tensor tensor(const std::string& name) const;  // throws naming the tensor when absent
  std::string file_of(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes one .safetensors file atomically (temp file, then rename). Tensors are written in
// name order from contiguous CPU copies; supported dtypes are those of safetensors_dtype_name.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes tensors as model.safetensors, or as model-0000k-of-0000n.safetensors shards plus
// model.safetensors.index.json when they exceed max_shard_bytes. Each file is atomic.
void write_checkpoint_tensors(const std::string& dir, const NamedTensors& tensors,
                              uint64_t max_shard_bytes = 4ull << 30);

// "[2, 3]": a shape as error messages print it.
std::string format_shape(at::IntArrayRef shape);

// "F32", "BF16", ... for a supported dtype; throws for others.
std::string safetensors_dtype_name(at::ScalarType dtype);

}  // namespace consa
