// safetensors reader/writer: the reader is checked against files built byte-by-byte from the
// format's spec, and every malformed-input case is refused with a message naming file and tensor.
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/load/safetensors.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

template <typename T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return s;
}

// Data section of the reference file: a = F32 [2] {1, -2}; b = BF16 [2] {1.5, 0.25}
// (bit patterns 0x3FC0, 0x3E80); c = F16 [1] {2.0} (0x4000).
const std::string kData = bytes_of<float>({1.0f, -2.0f}) + bytes_of<uint16_t>({0x3FC0, 0x3E80}) +
                          bytes_of<uint16_t>({0x4000});
const std::string kHeader =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
    R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
    R"("c":{"dtype":"F16","shape":[1,1],"data_offsets":[12,14]}})";

std::string write_raw(const std::string& dir, const std::string& name, const std::string& content) {
  const std::string path = dir + "/" + name;
  write_text(path, content);
  return path;
}

std::string with_header(const std::string& header, const std::string& data = kData) {
  return le64(header.size()) + header + data;
}

void expect_refused(const std::string& content, const std::string& message) {
  const std::string path = write_raw(scratch_dir("bad"), "bad.safetensors", content);
  CHECK_THROWS_WITH(SafetensorsFile::open(path), contains(path) && contains(message));
}

}  // namespace

TEST_CASE("reader decodes a file built from the spec", "[safetensors]") {
  const std::string path = write_raw(scratch_dir("spec"), "m.safetensors", with_header(kHeader));
  SafetensorsFile file = SafetensorsFile::open(path);
  CHECK(file.names() == std::vector<std::string>{"a", "b", "c"});
  CHECK(file.metadata().at("format") == "pt");
  at::Tensor a = file.tensor("a"), b = file.tensor("b"), c = file.tensor("c");
  CHECK(a.scalar_type() == at::kFloat);
  CHECK(a[0].item<float>() == 1.0f);
  CHECK(a[1].item<float>() == -2.0f);
  CHECK(b.scalar_type() == at::kBFloat16);
  CHECK(b.to(at::kFloat)[0].item<float>() == 1.5f);
  CHECK(b.to(at::kFloat)[1].item<float>() == 0.25f);
  CHECK(c.scalar_type() == at::kHalf);
  CHECK(c.sizes() == at::IntArrayRef({1, 1}));
  CHECK(c.to(at::kFloat).item<float>() == 2.0f);
}

TEST_CASE("writer output matches the spec and round-trips every dtype", "[safetensors]") {
  const std::string dir = scratch_dir("write");
  at::Tensor f32 = at::tensor({1.0f, -2.0f});
  at::Tensor bf16 = at::tensor({1.5f, 0.25f}).to(at::kBFloat16);
  at::Tensor f16 = at::tensor({2.0f}).to(at::kHalf).reshape({1, 1});
  at::Tensor i64 = at::arange(6, at::kLong).reshape({2, 3});
  write_safetensors(dir + "/w.safetensors", {{"a", f32}, {"b", bf16}, {"c", f16}, {"d", i64}},
                    {{"format", "pt"}});

  const std::string raw = read_text(dir + "/w.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  CHECK(header_len % 8 == 0);  // tensor data stays 8-byte aligned
  auto header = nlohmann::json::parse(raw.substr(8, header_len));
  CHECK(header["b"]["dtype"] == "BF16");
  CHECK(header["d"]["data_offsets"] == nlohmann::json::array({14, 62}));
  CHECK(raw.substr(8 + header_len, kData.size()) == kData);  // same bytes as the spec file

  SafetensorsFile file = SafetensorsFile::open(dir + "/w.safetensors");
  CHECK(file.tensor("d").equal(i64));
  CHECK(file.tensor("b").equal(bf16));
  CHECK(file.tensor("c").equal(f16));
  CHECK(!fs::exists(dir + "/w.safetensors.tmp." + std::to_string(::getpid())));
}

TEST_CASE("sharded checkpoints are written with an index and read back", "[safetensors]") {
  const std::string dir = scratch_dir("shard");
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("t" + std::to_string(i), at::full({100}, float(i)));
  write_checkpoint_tensors(dir, tensors, /*max_shard_bytes=*/900);
  CHECK(fs::exists(dir + "/model.safetensors.index.json"));
  CHECK(fs::exists(dir + "/model-00003-of-00003.safetensors"));
  CHECK(!fs::exists(dir + "/model.safetensors"));
  CheckpointTensors ckpt = CheckpointTensors::open(dir);
  REQUIRE(ckpt.names().size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(ckpt.tensor("t" + std::to_string(i)).equal(at::full({100}, float(i))));

  // Rewriting small replaces the shards' index, so the reader cannot pick up stale shards.
  write_checkpoint_tensors(dir, {{"only", at::ones({2})}});
  CHECK(!fs::exists(dir + "/model.safetensors.index.json"));
  CHECK(CheckpointTensors::open(dir).names() == std::vector<std::string>{"only"});
}

TEST_CASE("malformed safetensors files are refused with a one-line error", "[safetensors]") {
  SECTION("file shorter than the header length field") { expect_refused("abc", "too short"); }
  SECTION("truncated data section") {
    expect_refused(with_header(kHeader).substr(0, 8 + kHeader.size() + 9), "out of range");
  }
  SECTION("header length beyond the file") {
    expect_refused(le64(4096) + kHeader + kData, "runs beyond the end of the file");
  }
  SECTION("bad JSON") {
    std::string header = kHeader;
    header.back() = ',';
    expect_refused(with_header(header), "not valid JSON");
  }
  SECTION("overlapping offsets") {
    std::string header = kHeader;
    header.replace(header.find("[8,12]"), 6, "[6,10]");
    header.replace(header.find("[12,14]"), 7, "[10,12]");
    expect_refused(with_header(header, kData.substr(0, 12)), "tensor 'b' (bytes 6..10) overlaps tensor 'a'");
  }
  SECTION("offsets out of range") {
    std::string header = kHeader;
    header.replace(header.find("[12,14]"), 7, "[12,99]");
    expect_refused(with_header(header), "tensor 'c': data_offsets [12, 99) are out of range");
  }
  // kHeader with tensor a's shape replaced (its data_offsets stay [0,8]).
  const auto with_a_shape = [](const std::string& shape) {
    std::string header = kHeader;
    const std::string a_entry = R"("shape":[2],"data_offsets":[0,8])";
    header.replace(header.find(a_entry), a_entry.size(), "\"shape\":" + shape + ",\"data_offsets\":[0,8]");
    return with_header(header);
  };
  SECTION("byte size does not match shape x dtype") {
    expect_refused(with_a_shape("[3]"), "tensor 'a': data_offsets span 8 bytes but shape [3] x F32 needs 12");
  }
  SECTION("a shape whose element count overflows 64 bits") {
    // 2^32 * 2^32 * 4 elements wrap to 0 in unchecked arithmetic, which would "match" [0,0).
    expect_refused(with_a_shape("[4294967296,4294967296,4]"),
                   "tensor 'a': shape [4294967296, 4294967296]... has more elements than 64 bits");
  }
  SECTION("a shape whose byte count overflows 64 bits") {
    expect_refused(with_a_shape("[4611686018427387904]"), "is more bytes than 64 bits can count");
  }
  SECTION("a dimension beyond int64") {
    expect_refused(with_a_shape("[18446744073709551615]"), "non-negative integers below 2^63");
  }
  SECTION("unknown dtype") {
    std::string header = kHeader;
    header.replace(header.find("\"F16\""), 5, "\"F8_E4M3\"");
    expect_refused(with_header(header), "tensor 'c': unknown dtype 'F8_E4M3'; supported: F32, F16, BF16");
  }
  SECTION("a hole between tensors") {
    std::string header = kHeader;
    header.replace(header.find("[12,14]"), 7, "[13,15]");
    expect_refused(with_header(header, kData + "x"), "tensor 'c' starts at byte 13 leaving a hole");
  }
}

TEST_CASE("checkpoint directories refuse missing shards and tensors", "[safetensors]") {
  const std::string dir = scratch_dir("index");
  write_checkpoint_tensors(dir, {{"a", at::ones({64})}, {"b", at::ones({64})}}, 300);
  REQUIRE(fs::exists(dir + "/model-00002-of-00002.safetensors"));
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  CHECK_THROWS_WITH(CheckpointTensors::open(dir),
                    contains(dir + "/model.safetensors.index.json") &&
                        contains("tensor 'b' maps to shard 'model-00002-of-00002.safetensors', which does not exist"));

  const std::string empty = scratch_dir("empty");
  CHECK_THROWS_WITH(CheckpointTensors::open(empty), contains("no model.safetensors or model.safetensors.index.json"));

  const std::string single = scratch_dir("single");
  write_checkpoint_tensors(single, {{"a", at::ones({2})}});
  CHECK_THROWS_WITH(CheckpointTensors::open(single).tensor("nope"), contains(single) && contains("missing tensor 'nope'"));
}
