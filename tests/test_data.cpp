// Pre-tokenized corpora: consa shards (versions 1 and 2, document offsets, the streaming writer),
// Megatron-LM indexed datasets written byte by byte per megatron/core/datasets/indexed_dataset.py,
// headerless token files, their validation, data.shards in recipes, and a run on Megatron data.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/data/batches.h"
#include "consa/data/token_shards.h"
#include "consa/data/token_sources.h"
#include "consa/train/recipe.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;
namespace fs = std::filesystem;

namespace {

void put(std::string& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<int64_t> read_all(const TokenSource& s) {
  std::vector<int64_t> out(static_cast<size_t>(s.size()));
  s.read(0, s.size(), out.data());
  return out;
}

using Documents = std::vector<std::vector<std::vector<int64_t>>>;  // documents of sequences of ids

int item_size(int code) { return code <= 2 ? 1 : code == 3 || code == 8 ? 2 : code == 4 ? 4 : 8; }

struct MegatronFiles {
  std::string idx, bin;
  int64_t sequences = 0;
};

// The .idx and .bin of a Megatron IndexedDataset: "MMIDIDX\0\0", u64 version 1, u8 dtype code,
// u64 sequence count, u64 document index count (documents + 1), int32 lengths, int64 byte
// pointers, int64 document indices (0, then the sequence index ending each document). With
// `reversed`, the .bin stores the sequences last to first (pointers still say where each is).
MegatronFiles megatron_bytes(int code, const Documents& docs, bool reversed = false) {
  std::vector<std::vector<int64_t>> sequences;
  std::vector<int64_t> doc_index = {0};
  for (const auto& d : docs) {
    for (const auto& s : d) sequences.push_back(s);
    doc_index.push_back(static_cast<int64_t>(sequences.size()));
  }
  const int w = item_size(code);
  std::vector<int64_t> pointers(sequences.size());
  MegatronFiles f;
  f.sequences = static_cast<int64_t>(sequences.size());
  for (size_t k = 0; k < sequences.size(); ++k) {
    const size_t i = reversed ? sequences.size() - 1 - k : k;
    pointers[i] = static_cast<int64_t>(f.bin.size());
    for (int64_t id : sequences[i]) put(f.bin, static_cast<uint64_t>(id), w);
  }
  f.idx = std::string("MMIDIDX\0\0", 9);
  put(f.idx, 1, 8);
  put(f.idx, static_cast<uint64_t>(code), 1);
  put(f.idx, sequences.size(), 8);
  put(f.idx, doc_index.size(), 8);
  for (const auto& s : sequences) put(f.idx, s.size(), 4);
  for (int64_t p : pointers) put(f.idx, static_cast<uint64_t>(p), 8);
  for (int64_t d : doc_index) put(f.idx, static_cast<uint64_t>(d), 8);
  return f;
}

void write_megatron(const std::string& prefix, const MegatronFiles& f) {
  write_bytes(prefix + ".idx", f.idx);
  write_bytes(prefix + ".bin", f.bin);
}

std::vector<int64_t> flatten(const Documents& docs) {
  std::vector<int64_t> out;
  for (const auto& d : docs)
    for (const auto& s : d) out.insert(out.end(), s.begin(), s.end());
  return out;
}

// Overwrites n little-endian bytes of `bytes` at `at`.
std::string patched(std::string bytes, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) bytes[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return bytes;
}

}  // namespace

TEST_CASE("consa shards: version 2 keeps document offsets, version 1 still reads", "[data]") {
  const std::string dir = scratch_dir("data_shards");
  const std::vector<int64_t> ids = {5, 6, 7, 8, 9, 10, 11};
  write_token_shard(dir + "/docs.tok", ids, {0, 3, 3, 5});
  const std::string bytes = read_text(dir + "/docs.tok");
  REQUIRE(bytes.size() == 32 + 7 * 2 + 5 * 8);
  CHECK(bytes.substr(0, 8) == "CONSATOK");
  CHECK(bytes[8] == 2);    // version
  CHECK(bytes[12] == 2);   // uint16
  CHECK(bytes[16] == 7);   // tokens
  CHECK(bytes[24] == 4);   // documents
  CHECK(bytes[32 + 14 + 8 * 4] == 7);  // the last offset is the token count
  TokenShard s = TokenShard::open(dir + "/docs.tok");
  CHECK(s.version() == 2);
  REQUIRE(s.documents() == 4);
  const std::vector<int64_t> starts = {0, 3, 3, 5, 7};
  for (int64_t d = 0; d <= 4; ++d) CHECK(s.document_start(d) == starts[d]);
  auto source = open_token_source(dir + "/docs.tok");
  CHECK(source->format() == TokenFormat::Consa);
  CHECK(read_all(*source) == ids);
  CHECK(source->documents() == 4);
  CHECK(source->document_start(3) == 5);

  // Without document starts: one document, the whole shard.
  write_token_shard(dir + "/one.tok", {1, 2, 3});
  CHECK(TokenShard::open(dir + "/one.tok").documents() == 1);
  CHECK(TokenShard::open(dir + "/one.tok").document_start(1) == 3);

  // Version 1, byte by byte: one document.
  std::string v1 = "CONSATOK";
  put(v1, 1, 4);
  put(v1, 4, 4);
  put(v1, 3, 8);
  for (uint64_t id : {70000u, 1u, 2u}) put(v1, id, 4);
  write_bytes(dir + "/v1.tok", v1);
  TokenShard old = TokenShard::open(dir + "/v1.tok");
  CHECK(old.version() == 1);
  CHECK(old.documents() == 1);
  CHECK(old.document_start(0) == 0);
  CHECK(old.document_start(1) == 3);
  CHECK(read_all(*open_token_source(dir + "/v1.tok")) == std::vector<int64_t>{70000, 1, 2});

  // Offsets that do not describe the tokens are refused, naming the file.
  const std::string path = dir + "/bad.tok";
  write_bytes(path, patched(bytes, 32 + 14 + 8 * 2, 2, 8));  // offset 2 below offset 1
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("document offset 2 is 2, expected non-decreasing"));
  write_bytes(path, patched(bytes, 32 + 14 + 8 * 4, 6, 8));
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("the last document offset is 6, expected the token count 7"));
  write_bytes(path, patched(bytes, 32 + 14, 1, 8));
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("document 0 starts at token 1, expected 0"));
  write_bytes(path, patched(bytes, 24, 5, 8));  // one document more than the offsets hold
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("5 documents"));
  write_bytes(path, patched(bytes, 24, ~0ull, 8));  // counts whose sizes overflow
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("but the file holds"));
  write_bytes(path, bytes.substr(0, 28));
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("truncated header"));
  write_bytes(path, patched(bytes, 12, 3, 4));
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("bytes per token is 3, expected 2 or 4"));
  write_bytes(path, patched(bytes, 8, 3, 4));
  CHECK_THROWS_WITH(TokenShard::open(path), contains(path) && contains("token shard version 3"));
  CHECK_THROWS_WITH(write_token_shard(path, ids, {1, 3}), contains(path) && contains("first document starts at 1"));
  CHECK_THROWS_WITH(write_token_shard(path, ids, {0, 4, 2}), contains(path) && contains("document 2 starts at 2"));
  CHECK_THROWS_WITH(write_token_shard(path, ids, {0, 8}), contains(path) && contains("document 1 starts at 8"));
}

TEST_CASE("TokenShardWriter streams documents and writes nothing until commit", "[data]") {
  const std::string dir = scratch_dir("data_writer");
  const std::vector<int64_t> a = {3, 1, 4}, b = {1, 5, 9, 2, 6}, big = {70000, 2};
  {
    TokenShardWriter w(dir + "/s.tok");  // no max id: uint32
    w.add_document(a.data(), 3);
    w.add_document(b.data(), 0);
    w.add_document(b.data(), 5);
    w.add_document(big.data(), 2);
    CHECK(w.tokens() == 10);
    CHECK(w.documents() == 4);
    CHECK(!fs::exists(dir + "/s.tok"));
    w.commit();
  }
  TokenShard s = TokenShard::open(dir + "/s.tok");
  CHECK(s.bytes_per_token() == 4);
  CHECK(s.documents() == 4);
  std::vector<int64_t> back(10);
  s.read(0, 10, back.data());
  CHECK(back == std::vector<int64_t>{3, 1, 4, 1, 5, 9, 2, 6, 70000, 2});
  const std::vector<int64_t> starts = {0, 3, 3, 8, 10};
  for (int64_t d = 0; d <= 4; ++d) CHECK(s.document_start(d) == starts[d]);

  {
    TokenShardWriter w(dir + "/small.tok", 9);  // ids up to 9: uint16
    w.add_document(b.data(), 5);
    CHECK_THROWS_WITH(w.add_document(big.data(), 2),
                      contains(dir + "/small.tok: token id 70000 of document 1 does not fit a uint16 shard (max_id 9"));
    CHECK(w.documents() == 1);  // the refused document left no trace
    const int64_t above_hint = 40;  // fits uint16 all the same
    w.add_document(&above_hint, 1);
    w.commit();
  }
  TokenShard small = TokenShard::open(dir + "/small.tok");
  CHECK(small.bytes_per_token() == 2);
  CHECK(small.size() == 6);
  CHECK(small.documents() == 2);
  CHECK(small.token(5) == 40);
  {
    TokenShardWriter w(dir + "/dropped.tok");
    w.add_document(a.data(), 3);
  }  // destroyed without commit: no shard, no temp file
  CHECK(!fs::exists(dir + "/dropped.tok"));
  int64_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().filename().string().rfind("dropped", 0) == 0;
  CHECK(files == 0);
}

TEST_CASE("Megatron indexed datasets read back for every integer dtype", "[data]") {
  const std::string dir = scratch_dir("data_megatron");
  const Documents docs = {{{1, 2, 3}, {4}}, {{5, 6}}, {{}, {7, 8, 9, 10}}, {{11}}};
  const std::vector<int64_t> ids = flatten(docs);
  const std::vector<int64_t> starts = {0, 4, 6, 10, 11};
  for (int code : {1, 2, 3, 4, 5, 8}) {
    for (bool reversed : {false, true}) {
      INFO("dtype code " << code << (reversed ? ", sequences stored last to first" : ""));
      const std::string prefix = dir + "/c" + std::to_string(code) + (reversed ? "r" : "");
      write_megatron(prefix, megatron_bytes(code, docs, reversed));
      for (const std::string& name : {prefix, prefix + ".bin", prefix + ".idx"}) {
        CHECK(resolve_token_format(name) == TokenFormat::Megatron);
        auto source = open_token_source(name);
        CHECK(source->format() == TokenFormat::Megatron);
        CHECK(source->path() == prefix + ".bin");
        REQUIRE(source->size() == 11);
        CHECK(read_all(*source) == ids);
        REQUIRE(source->documents() == 4);
        for (int64_t d = 0; d <= 4; ++d) CHECK(source->document_start(d) == starts[d]);
        std::vector<int64_t> part(5);
        source->read(3, 5, part.data());  // across three sequences and two documents
        CHECK(part == std::vector<int64_t>{4, 5, 6, 7, 8});
        CHECK(source->max_token() == 11);
      }
      CHECK(read_all(*open_token_source({prefix, TokenFormat::Megatron})) == ids);
    }
  }
  // Signed dtypes keep their sign (and then fail the vocabulary check), wide ones their width.
  write_megatron(dir + "/neg", megatron_bytes(2, {{{3, -2}}}));
  CHECK(read_all(*open_token_source(dir + "/neg")) == std::vector<int64_t>{3, -2});
  CHECK_THROWS_WITH(open_token_source(dir + "/neg")->check_vocabulary(10),
                    contains(dir + "/neg.bin: token id -2 (token 1) is outside the model's vocabulary of 10"));
  write_megatron(dir + "/wide", megatron_bytes(5, {{{5000000000ll, 1}}}));
  CHECK(open_token_source(dir + "/wide")->max_token() == 5000000000ll);
  // A multimodal index carries one int8 mode per sequence after the document indices: ignored.
  MegatronFiles modes = megatron_bytes(4, docs);
  modes.idx += std::string(static_cast<size_t>(modes.sequences), '\0');
  write_megatron(dir + "/modes", modes);
  CHECK(read_all(*open_token_source(dir + "/modes")) == ids);
  // An empty dataset: no tokens, no documents.
  write_megatron(dir + "/empty", megatron_bytes(4, {}));
  CHECK(open_token_source(dir + "/empty")->size() == 0);
  CHECK(open_token_source(dir + "/empty")->documents() == 0);
}

TEST_CASE("Megatron indexes are validated before use", "[data]") {
  const std::string dir = scratch_dir("data_megatron_bad");
  const Documents docs = {{{1, 2, 3}, {4}}, {{5, 6}}};  // 3 sequences, document indices 0 2 3
  const MegatronFiles good = megatron_bytes(8, docs);  // uint16
  const std::string prefix = dir + "/ds", idx = prefix + ".idx", bin = prefix + ".bin";
  const size_t lengths = 34, pointers = 34 + 4 * 3, doc_index = 34 + 12 * 3;
  auto message = [&](const std::string& idx_bytes, const std::string& bin_bytes) -> std::string {
    write_bytes(idx, idx_bytes);
    write_bytes(bin, bin_bytes);
    try {
      open_token_source({prefix, TokenFormat::Megatron});
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  };
  REQUIRE(message(good.idx, good.bin) == "no error");
  CHECK_THAT(message(good.idx.substr(0, 14), good.bin), contains(idx) && contains("truncated Megatron index: 14 bytes, the header alone is 34"));
  CHECK_THAT(message(patched(good.idx, 0, 'X', 1), good.bin), contains(idx) && contains("not a Megatron index (expected the MMIDIDX header"));
  CHECK_THAT(message(patched(good.idx, 9, 2, 8), good.bin), contains(idx) && contains("Megatron index version 2, expected 1"));
  CHECK_THAT(message(patched(good.idx, 17, 7, 1), good.bin), contains(idx) && contains("token dtype float32 (code 7) is not an integer type"));
  CHECK_THAT(message(patched(good.idx, 17, 6, 1), good.bin), contains(idx) && contains("token dtype float64 (code 6) is not an integer type"));
  CHECK_THAT(message(patched(good.idx, 17, 9, 1), good.bin), contains(idx) && contains("unknown dtype code 9"));
  CHECK_THAT(message(good.idx.substr(0, good.idx.size() - 1), good.bin),
             contains(idx) && contains("header says 3 sequences and 3 document indices, which take 94 bytes, but the file holds 93 bytes"));
  CHECK_THAT(message(patched(good.idx, 18, 1ull << 62, 8), good.bin), contains(idx) && contains("more than a file holds"));
  CHECK_THAT(message(patched(good.idx, pointers + 8, 1000, 8), good.bin),
             contains(idx) && contains("sequence 1 spans bytes [1000, 1002) of " + bin + ", which holds 12 bytes"));
  CHECK_THAT(message(good.idx, good.bin.substr(0, 11)), contains(idx) && contains("sequence 2 spans bytes [8, 12) of " + bin + ", which holds 11 bytes"));
  CHECK_THAT(message(patched(good.idx, pointers, ~0ull, 8), good.bin), contains(idx) && contains("sequence 0 has length 3 and pointer -1"));
  CHECK_THAT(message(patched(good.idx, lengths + 4, 0x80000000ull, 4), good.bin), contains(idx) && contains("sequence 1 has length -2147483648"));
  // A length so large that length x itemsize passes any .bin.
  CHECK_THAT(message(patched(good.idx, lengths, 0x7fffffffull, 4), good.bin), contains(idx) && contains("sequence 0 spans bytes [0, 4294967294)"));
  CHECK_THAT(message(patched(good.idx, doc_index + 8, 4, 8), good.bin), contains(idx) && contains("document index 1 is 4, expected non-decreasing sequence indices in [0, 3]"));
  CHECK_THAT(message(patched(patched(good.idx, doc_index + 8, 3, 8), doc_index + 16, 2, 8), good.bin),
             contains(idx) && contains("document index 2 is 2, expected non-decreasing sequence indices in [3, 3]"));
  CHECK_THAT(message(patched(good.idx, doc_index + 16, 2, 8), good.bin), contains(idx) && contains("the last document index is 2, expected the sequence count 3"));
  CHECK_THAT(message(patched(good.idx, doc_index, 1, 8), good.bin), contains(idx) && contains("document indices must start with 0, got 1"));
  fs::remove(bin);
  CHECK_THROWS_WITH(open_token_source({prefix, TokenFormat::Megatron}),
                    contains(prefix + ": not a Megatron dataset (expected " + bin + " and " + idx + "; missing " + bin));
}

TEST_CASE("headerless token files read as uint16 or uint32", "[data]") {
  const std::string dir = scratch_dir("data_raw");
  std::string b16, b32;
  for (uint64_t id : {0u, 1u, 65535u, 300u}) put(b16, id, 2);
  for (uint64_t id : {0u, 1u, 70000u, 300u}) put(b32, id, 4);
  write_bytes(dir + "/t16.bin", b16);
  write_bytes(dir + "/t32.bin", b32);
  auto s16 = open_token_source({dir + "/t16.bin", TokenFormat::Raw, 2});
  CHECK(s16->format() == TokenFormat::Raw);
  CHECK(read_all(*s16) == std::vector<int64_t>{0, 1, 65535, 300});
  CHECK(s16->documents() == 1);
  CHECK(s16->document_start(1) == 4);
  CHECK(read_all(*open_token_source({dir + "/t32.bin", TokenFormat::Raw, 4})) == std::vector<int64_t>{0, 1, 70000, 300});
  // The same bytes as the other width read differently: the width is the recipe's to say.
  CHECK(open_token_source({dir + "/t32.bin", TokenFormat::Raw, 2})->size() == 8);
  write_bytes(dir + "/odd.bin", b16 + "x");
  CHECK_THROWS_WITH(open_token_source({dir + "/odd.bin", TokenFormat::Raw, 2}),
                    contains(dir + "/odd.bin: 9 bytes is not a whole number of 2-byte tokens (format raw, dtype uint16)"));
  write_bytes(dir + "/odd32.bin", b16 + "xy");
  CHECK_THROWS_WITH(open_token_source({dir + "/odd32.bin", TokenFormat::Raw, 4}),
                    contains(dir + "/odd32.bin: 10 bytes is not a whole number of 4-byte tokens"));
  // Auto on a headerless file without a Megatron .idx: refused, pointing at format raw.
  CHECK(resolve_token_format(dir + "/t16.bin") == TokenFormat::Consa);
  CHECK_THROWS_WITH(open_token_source(dir + "/t16.bin"),
                    contains(dir + "/t16.bin: not a consa token shard (no CONSATOK header)") && contains("format: raw"));
  CHECK_THROWS_WITH(open_token_source({dir + "/t16.bin", TokenFormat::Consa}),
                    contains(dir + "/t16.bin: not a consa token shard"));
  CHECK_THROWS_WITH(open_token_source({dir + "/none.bin", TokenFormat::Raw, 2}), contains(dir + "/none.bin: not found"));
  CHECK_THROWS_WITH(open_token_source(dir + "/none.tok"), contains(dir + "/none.tok: not found"));
}

TEST_CASE("batches read every format the same way and check ids against the vocabulary", "[data]") {
  const std::string dir = scratch_dir("data_batches");
  std::vector<int64_t> ids(600);
  for (int64_t i = 0; i < 600; ++i) ids[i] = (i * 7) % 90;
  auto part = [&](int64_t a, int64_t b) { return std::vector<int64_t>(ids.begin() + a, ids.begin() + b); };
  write_token_shard(dir + "/a.tok", part(0, 150), {0, 100});
  write_megatron(dir + "/b", megatron_bytes(4, {{part(150, 200), part(200, 330)}, {part(330, 400)}}));
  std::string raw;
  for (int64_t id : part(400, 600)) put(raw, static_cast<uint64_t>(id), 2);
  write_bytes(dir + "/c.raw", raw);
  DataOptions o;
  o.seq_len = 40;
  o.batch_size = 3;
  o.heldout_batches = 1;
  o.synthetic_ratio = 0.0;
  o.shards = {dir + "/a.tok", {dir + "/b", TokenFormat::Megatron}, {dir + "/c.raw", TokenFormat::Raw, 2}};
  BatchStream train(o, 96, 10, Split::Train);
  CHECK(train.heldout_windows() == 3);  // 15 windows, the last 3 held out
  for (int64_t i = 0; i < 12; ++i)      // training sequence i is window i, crossing every format's boundary
    CHECK(train.sequences(i, 1).tokens[0].equal(at::tensor(part(40 * i, 40 * i + 40))));

  // Every format's ids are checked against the model's vocabulary, naming the file and the id.
  CHECK_THROWS_WITH(BatchStream(o, 89, 10, Split::Train),
                    contains(dir + "/a.tok: token id 89 (token 77) is outside the model's vocabulary of 89"));
  o.shards = {{dir + "/b", TokenFormat::Megatron}};
  CHECK_THROWS_WITH(BatchStream(o, 89, 10, Split::Train), contains(dir + "/b.bin: token id 89") &&
                                                              contains("outside the model's vocabulary of 89"));
  o.shards = {{dir + "/c.raw", TokenFormat::Raw, 2}};
  CHECK_THROWS_WITH(BatchStream(o, 89, 10, Split::Train), contains(dir + "/c.raw: token id 89") &&
                                                              contains("outside the model's vocabulary of 89"));
}

TEST_CASE("data.shards takes paths and {path, format, dtype} mappings and round-trips them", "[data]") {
  const std::string dir = scratch_dir("data_recipe");
  const std::string path = dir + "/r.yaml";
  write_text(path, "model: {path: m}\n"
                   "data:\n  synthetic_ratio: 0\n  shards:\n"
                   "    - a.tok\n"
                   "    - {path: corpus/train_text_document, format: megatron}\n"
                   "    - {path: train.bin, format: raw, dtype: uint16}\n"
                   "    - {path: x.tok, format: consa}\n"
                   "    - {path: y.bin}\n"
                   "    - {path: 'odd: name.bin', format: raw, dtype: uint32}\n");
  Recipe r = load_recipe(path);
  const std::vector<TokenSourceSpec> expected = {"a.tok",
                                                 {"corpus/train_text_document", TokenFormat::Megatron},
                                                 {"train.bin", TokenFormat::Raw, 2},
                                                 {"x.tok", TokenFormat::Consa},
                                                 "y.bin",
                                                 {"odd: name.bin", TokenFormat::Raw, 4}};
  CHECK((r.data.shards == expected));
  const std::string yaml = recipe_to_yaml(r);
  CHECK_THAT(yaml, contains("{path: train.bin, format: raw, dtype: uint16}"));
  write_text(dir + "/again.yaml", yaml);
  CHECK((load_recipe(dir + "/again.yaml").data.shards == expected));
  // Overrides take the same forms.
  Recipe o = load_recipe(path, {"data.shards=[{path: t.bin, format: raw, dtype: uint32}, b]"});
  CHECK((o.data.shards == std::vector<TokenSourceSpec>{{"t.bin", TokenFormat::Raw, 4}, "b"}));

  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[{path: t.bin, fromat: raw}]"}),
                    contains("unknown key 'data.shards[0].fromat'; allowed in data.shards[0]: path, format, dtype"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[a, {path: t.bin, format: npy}]"}),
                    contains("data.shards[1].format: 'npy' is not allowed; allowed: auto, consa, megatron, raw"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[{path: t.bin, format: raw, dtype: int16}]"}),
                    contains("data.shards[0].dtype: 'int16' is not allowed; allowed: uint16, uint32"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[{path: t.bin, format: raw}]"}),
                    contains("data.shards[0].dtype: required for format raw; allowed: uint16, uint32"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[{path: p, format: megatron, dtype: uint16}]"}),
                    contains("data.shards[0].dtype: only format raw takes a dtype"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[{format: megatron}]"}), contains("data.shards[0].path: required"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=[[a, b]]"}), contains("data.shards[0]: expected a path or a mapping"));
  CHECK_THROWS_WITH(load_recipe(path, {"data.shards=a.tok"}), contains(path) && contains("data.shards: expected a list"));
}

TEST_CASE("consa train and validate read a Megatron dataset", "[data]") {
  const std::string dir = scratch_dir("data_train");
  // 40 documents of 5..24 tokens each (ids < 96, the fixture's vocabulary), 2 sequences per document.
  Documents docs;
  for (int64_t d = 0; d < 40; ++d) {
    std::vector<int64_t> first, second;
    for (int64_t t = 0; t < 5 + d % 20; ++t) (t % 2 ? second : first).push_back((d * 13 + t * 5) % 96);
    docs.push_back({first, second});
  }
  write_megatron(dir + "/corpus_text_document", megatron_bytes(8, docs));
  write_text(dir + "/recipe.yaml", "model: {path: " + fixture("qwen3_norm") + "}\n" +
                                       "gates: {window: 4}\n"
                                       "data: {seq_len: 24, batch_size: 2, heldout_batches: 1, synthetic_ratio: 0, "
                                       "shards: [{path: " + dir + "/corpus_text_document, format: megatron}]}\n"
                                       "train: {steps: 4, log_every: 1, checkpoint_every: 2}\noutput: {dir: " + dir +
                                       "/run}\n");
  std::string out, err;
  REQUIRE(run_consa("validate " + dir + "/recipe.yaml", &out, &err) == 0);
  CHECK_THAT(out, contains("# data.shards[0]: " + dir + "/corpus_text_document (megatron, uint16): 580 tokens, 40 documents, "
                           "ids within the vocabulary of 96"));
  // Stopped after 2 steps and resumed from the run's own recipe.yaml, which names the dataset again.
  REQUIRE(run_consa("train " + dir + "/recipe.yaml --stop-after 2", &out, &err) == 0);
  CHECK_THAT(out, contains("stopped after step 2"));
  CHECK((load_recipe(dir + "/run/recipe.yaml").data.shards ==
         std::vector<TokenSourceSpec>{{dir + "/corpus_text_document", TokenFormat::Megatron}}));
  REQUIRE(run_consa("train " + dir + "/run/recipe.yaml --resume", &out, &err) == 0);
  CHECK_THAT(out, contains("expected SWA fraction"));
  CHECK(fs::exists(dir + "/run/checkpoint.pt"));
  const std::string metrics = read_text(dir + "/run/metrics.jsonl");
  REQUIRE(metrics.find("\"step\":4") != std::string::npos);
  const size_t at = metrics.rfind("\"ce\":");
  REQUIRE(at != std::string::npos);
  const double ce = std::stod(metrics.substr(at + 5));
  CHECK(std::isfinite(ce));
  CHECK(ce > 0);

  // data.document_mask: the same corpus with attention kept inside each document trains too, and
  // differs from the packed run from its first step; synthetic-only data has no documents to mask.
  REQUIRE(run_consa("train " + dir + "/recipe.yaml --overwrite output.dir=" + dir + "/masked data.document_mask=true "
                    "train.steps=1", &out, &err) == 0);
  CHECK(load_recipe(dir + "/masked/recipe.yaml").data.document_mask);
  auto first_ce = [](const std::string& path) {
    const std::string m = read_text(path);
    const size_t at = m.find("\"ce\":");
    REQUIRE(at != std::string::npos);
    return std::stod(m.substr(at + 5));
  };
  CHECK(std::isfinite(first_ce(dir + "/masked/metrics.jsonl")));
  CHECK(first_ce(dir + "/masked/metrics.jsonl") != first_ce(dir + "/run/metrics.jsonl"));
  CHECK(run_consa("validate " + dir + "/recipe.yaml data.document_mask=true data.synthetic_ratio=1 data.shards=[]",
                  &out, &err) == 1);
  CHECK_THAT(err, contains("data.document_mask: needs data.shards"));

  // A broken index stops validate and train with one line naming the file.
  MegatronFiles bad = megatron_bytes(8, docs);
  write_megatron(dir + "/corpus_text_document", {patched(bad.idx, 17, 7, 1), bad.bin});
  CHECK(run_consa("validate " + dir + "/recipe.yaml", &out, &err) == 1);
  CHECK_THAT(err, contains("consa: error: " + dir + "/corpus_text_document.idx: token dtype float32 (code 7)"));
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
  CHECK(run_consa("train " + dir + "/recipe.yaml --overwrite", &out, &err) == 1);
  CHECK_THAT(err, contains(dir + "/corpus_text_document.idx: token dtype float32"));
}

TEST_CASE("data.document_mask numbers each window's documents and scores no cross-document target", "[data]") {
  // Every token carries its document's global number, so the reference ids of a window are the
  // runs of equal tokens in it; each source starts a new document.
  const std::string dir = scratch_dir("document_mask");
  int64_t next_document = 1;
  auto documents_of = [&](const std::vector<int64_t>& lengths, std::vector<int64_t>* starts) {
    std::vector<int64_t> ids;
    for (int64_t n : lengths) {
      if (starts) starts->push_back(static_cast<int64_t>(ids.size()));
      ids.insert(ids.end(), n, next_document++);
    }
    return ids;
  };
  std::vector<int64_t> starts;
  const std::vector<int64_t> a = documents_of({3, 11, 1, 2, 0, 9, 20}, &starts);  // an empty one too
  write_token_shard(dir + "/a.tok", a, starts);
  Documents mega;
  for (int64_t n : {5, 13, 4}) mega.push_back({documents_of({n}, nullptr)});
  write_megatron(dir + "/b", megatron_bytes(4, mega));
  DataOptions o;
  o.seq_len = 8;
  o.batch_size = 2;
  o.heldout_batches = 1;
  o.synthetic_ratio = 0.0;
  o.document_mask = true;
  o.shards = {dir + "/a.tok", {dir + "/b", TokenFormat::Megatron}};
  BatchStream train(o, 64, 4, Split::Train);
  const int64_t windows = (static_cast<int64_t>(a.size()) + 22) / 8;
  for (int64_t i = 0; i < windows - train.heldout_windows(); ++i) {
    const Batch b = train.sequences(i, 1);
    REQUIRE(b.document_ids.defined());
    const at::Tensor tokens = b.tokens[0], got = b.document_ids[0], mask = b.ce_mask[0];
    int64_t run = 0;
    for (int64_t t = 1; t < 8; ++t) {
      const bool boundary = tokens[t].item<int64_t>() != tokens[t - 1].item<int64_t>();
      run += boundary;
      CHECK((got[t].item<int64_t>() > got[t - 1].item<int64_t>()) == boundary);
      CHECK(mask[t - 1].item<float>() == (boundary ? 0.f : 1.f));
    }
    CHECK(got[0].item<int64_t>() == 0);
    CHECK((run > 0) == (got[7].item<int64_t>() > 0));
  }
  // Without the switch: no ids, every target scored.
  o.document_mask = false;
  const Batch plain = BatchStream(o, 64, 4, Split::Train).sequences(0, 2);
  CHECK(!plain.document_ids.defined());
  CHECK(plain.ce_mask.sum().item<float>() == 14.f);
}
