#include "consa/load/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "consa/core/atomic_file.h"
#include "consa/core/mapped_file.h"
#include "consa/core/checked_math.h"
#include "consa/core/error.h"

namespace consa {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct DtypeName {
  const char* name;
  at::ScalarType dtype;
};
constexpr DtypeName kDtypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"F64", at::kDouble},
    {"I64", at::kLong},  {"I32", at::kInt},  {"I16", at::kShort},     {"I8", at::kChar},
    {"U8", at::kByte},   {"BOOL", at::kBool},
};

std::string supported_dtype_list() {
  std::string list;
  for (const auto& d : kDtypes) list += (list.empty() ? "" : ", ") + std::string(d.name);
  return list;
}

// Largest header the format allows (as in the reference implementation): guards against a
// corrupt length making us parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

}  // namespace

std::string format_shape(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  fail("safetensors cannot store dtype ", c10::toString(dtype), "; supported: ",
       supported_dtype_list());
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::make_shared<MappedFile>(path);
  const uint64_t size = file.mapping_->size();
  const uint8_t* bytes = file.mapping_->data();

  CONSA_CHECK(size >= 8, path, ": file is ", size,
              " bytes, too short for the 8-byte header length (truncated?)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little endian
  CONSA_CHECK(header_len <= size - 8, path, ": header length ", header_len,
              " runs beyond the end of the file (", size, " bytes; truncated or not safetensors?)");
  CONSA_CHECK(header_len <= kMaxHeaderBytes, path, ": header length ", header_len,
              " exceeds the format's limit of ", kMaxHeaderBytes, " bytes");

  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const json::exception& e) {
    fail(path, ": header is not valid JSON: ", e.what());
  }
  CONSA_CHECK(header.is_object(), path, ": header must be a JSON object");

  const uint64_t data_size = size - 8 - header_len;
  file.data_ = bytes + 8 + header_len;

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      CONSA_CHECK(entry.is_object(), path, ": __metadata__ must be an object of strings");
      for (const auto& [key, value] : entry.items()) {
        CONSA_CHECK(value.is_string(), path, ": __metadata__ '", key, "' must be a string");
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    CONSA_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                    entry.contains("data_offsets"),
                where, ": entry must have dtype, shape and data_offsets");
    TensorRecord rec;
    rec.name = name;

    CONSA_CHECK(entry["dtype"].is_string(), where, ": dtype must be a string");
    const std::string dtype = entry["dtype"].get<std::string>();
    auto known = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                              [&](const DtypeName& d) { return dtype == d.name; });
    CONSA_CHECK(known != std::end(kDtypes), where, ": unknown dtype '", dtype, "'; supported: ",
                supported_dtype_list());
    rec.dtype = known->dtype;

    const auto& shape = entry["shape"];
    CONSA_CHECK(shape.is_array(), where, ": shape must be an array of non-negative integers");
    uint64_t numel = 1;
    for (const auto& dim : shape) {
      CONSA_CHECK((dim.is_number_unsigned() && fits_int64(dim.get<uint64_t>())) ||
                      (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                  where, ": shape must be an array of non-negative integers below 2^63");
      rec.shape.push_back(dim.get<int64_t>());
      CONSA_CHECK(checked_multiply(numel, static_cast<uint64_t>(rec.shape.back()), &numel), where, ": shape ",
                  format_shape(rec.shape), "... has more elements than 64 bits can count");
    }

    const auto& offsets = entry["data_offsets"];
    CONSA_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                    offsets[1].is_number_unsigned(),
                where, ": data_offsets must be [begin, end] with non-negative integers");
    rec.begin = offsets[0].get<uint64_t>();
    rec.end = offsets[1].get<uint64_t>();
    CONSA_CHECK(rec.begin <= rec.end && rec.end <= data_size, where, ": data_offsets [", rec.begin,
                ", ", rec.end, ") are out of range of the ", data_size,
                "-byte data section (truncated file?)");
    uint64_t expected = 0;
    CONSA_CHECK(checked_multiply(numel, c10::elementSize(rec.dtype), &expected), where, ": shape ",
                format_shape(rec.shape), " x ", dtype, " is more bytes than 64 bits can count");
    CONSA_CHECK(rec.end - rec.begin == expected, where, ": data_offsets span ", rec.end - rec.begin,
                " bytes but shape ", format_shape(rec.shape), " x ", dtype, " needs ", expected);
    file.records_.emplace(name, std::move(rec));
  }

  // The data section must be tiled exactly: no overlaps, no holes, nothing left over.
  std::vector<const TensorRecord*> by_offset;
  for (const auto& [name, rec] : file.records_) by_offset.push_back(&rec);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorRecord* a, const TensorRecord* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const TensorRecord* previous = nullptr;
  for (const TensorRecord* rec : by_offset) {
    CONSA_CHECK(rec->begin >= cursor, path, ": tensor '", rec->name, "' (bytes ", rec->begin, "..",
                rec->end, ") overlaps tensor '", previous ? previous->name : "", "' (bytes ",
                previous ? previous->begin : 0, "..", cursor, ")");
    CONSA_CHECK(rec->begin == cursor, path, ": tensor '", rec->name, "' starts at byte ",
                rec->begin, " leaving a hole after byte ", cursor);
    cursor = rec->end;
    previous = rec;
  }
  CONSA_CHECK(cursor == data_size, path, ": ", data_size - cursor,
              " bytes at the end of the data section belong to no tensor");
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, rec] : records_) out.push_back(name);
  return out;
}

const TensorRecord& SafetensorsFile::record(const std::string& name) const {
  auto it = records_.find(name);
  CONSA_CHECK(it != records_.end(), path_, ": no tensor '", name, "'");
  return it->second;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorRecord& rec = record(name);
  auto options = at::TensorOptions().dtype(rec.dtype).device(at::kCPU);
  if (rec.begin == rec.end) return at::empty(rec.shape, options);
  uint8_t* ptr = const_cast<uint8_t*>(data_) + rec.begin;
  auto keep_alive = mapping_;
  at::Tensor view = at::from_blob(
      ptr, rec.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  // Unaligned element data is legal in the format; give kernels an aligned copy.
  if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(rec.dtype) != 0) return view.clone();
  return view;
}

CheckpointTensors CheckpointTensors::open(const std::string& dir) {
  CheckpointTensors ckpt;
  ckpt.dir_ = dir;
  if (fs::is_regular_file(dir)) {
    ckpt.files_.push_back(SafetensorsFile::open(dir));
  } else {
    const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single_path = fs::path(dir) / "model.safetensors";
    if (fs::exists(index_path)) {
      const std::string index_file = index_path.string();
      json index;
      try {
        index = json::parse(read_text_file(index_file));
      } catch (const json::exception& e) {
        fail(index_file, ": not valid JSON: ", e.what());
      }
      CONSA_CHECK(index.is_object() && index.contains("weight_map") &&
                      index["weight_map"].is_object(),
                  index_file, ": expected an object with a 'weight_map' of tensor -> shard file");
      std::map<std::string, size_t> shard_slot;
      for (const auto& [tensor, shard] : index["weight_map"].items()) {
        CONSA_CHECK(shard.is_string(), index_file, ": weight_map['", tensor,
                    "'] must be a file name");
        const std::string shard_name = shard.get<std::string>();
        // Shards are files of this checkpoint: a name that leaves its directory is refused.
        const fs::path shard_rel(shard_name);
        CONSA_CHECK(!shard_name.empty() && shard_rel.is_relative() &&
                        std::find(shard_rel.begin(), shard_rel.end(), "..") == shard_rel.end(),
                    index_file, ": weight_map['", tensor, "'] is '", shard_name,
                    "'; expected a file name inside the checkpoint directory");
        auto it = shard_slot.find(shard_name);
        if (it == shard_slot.end()) {
          const fs::path shard_path = fs::path(dir) / shard_name;
          CONSA_CHECK(fs::is_regular_file(shard_path), index_file, ": tensor '", tensor,
                      "' maps to shard '", shard_name, "', which does not exist");
          it = shard_slot.emplace(shard_name, ckpt.files_.size()).first;
          ckpt.files_.push_back(SafetensorsFile::open(shard_path.string()));
        }
        CONSA_CHECK(ckpt.files_[it->second].contains(tensor), index_file, ": tensor '", tensor,
                    "' is listed in shard '", shard_name, "' but is not in that file");
        ckpt.where_[tensor] = it->second;
      }
      return ckpt;
    }
    CONSA_CHECK(fs::exists(single_path), dir,
                ": no model.safetensors or model.safetensors.index.json found");
    ckpt.files_.push_back(SafetensorsFile::open(single_path.string()));
  }
  for (const auto& name : ckpt.files_[0].names()) ckpt.where_[name] = 0;
  return ckpt;
}

std::vector<std::string> CheckpointTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, slot] : where_) out.push_back(name);
  return out;
}

at::Tensor CheckpointTensors::tensor(const std::string& name) const {
  auto it = where_.find(name);
  CONSA_CHECK(it != where_.end(), dir_, ": missing tensor '", name, "'");
  return files_[it->second].tensor(name);
}

std::string CheckpointTensors::file_of(const std::string& name) const {
  auto it = where_.find(name);
  CONSA_CHECK(it != where_.end(), dir_, ": missing tensor '", name, "'");
  return files_[it->second].path();
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> sorted;
  for (const auto& [name, t] : tensors) sorted.emplace_back(name, t.detach().to(at::kCPU).contiguous());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& [name, t] = sorted[i];
    CONSA_CHECK(i == 0 || sorted[i - 1].first != name, path, ": tensor '", name,
                "' given twice");
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // keep tensor data 8-byte aligned

  AtomicFileWriter out(path);
  uint8_t length[8];
  uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(length, 8);
  out.write(header_text.data(), header_text.size());
  for (const auto& [name, t] : sorted) out.write(t.data_ptr(), t.numel() * t.element_size());
  out.commit();
}

void write_checkpoint_tensors(const std::string& dir, const NamedTensors& tensors,
                              uint64_t max_shard_bytes) {
  fs::create_directories(dir);
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";

  NamedTensors sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& entry : sorted) {
    const uint64_t bytes = static_cast<uint64_t>(entry.second.numel()) * entry.second.element_size();
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(entry);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  if (shards.size() == 1) {
    write_safetensors(single_path.string(), shards[0], {{"format", "pt"}});
    fs::remove(index_path);  // a stale index would take precedence over the new file
    return;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors((fs::path(dir) / name).string(), shards[i], {{"format", "pt"}});
    for (const auto& [tensor, t] : shards[i]) weight_map[tensor] = name;
  }
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  AtomicFileWriter out(index_path.string());
  out.stream() << index.dump(2) << "\n";
  out.commit();
  fs::remove(single_path);
}

}  // namespace consa
