#include "corpus.h"

#include <glob.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "consa/core/error.h"
#include "consa/core/strings.h"

#if defined(CONSA_WITH_ZLIB)
#include <zlib.h>
#endif
#if defined(CONSA_WITH_ZSTD)
#include <zstd.h>
#endif

namespace consa::tokenize {

namespace fs = std::filesystem;

namespace {

bool has_glob_characters(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

}  // namespace

std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns) {
  std::vector<std::string> files;
  for (const auto& pattern : patterns) {
    if (!has_glob_characters(pattern)) {
      CONSA_CHECK(fs::is_regular_file(pattern), pattern, ": no such input file");
      files.push_back(pattern);
      continue;
    }
    glob_t matches;
    const int r = ::glob(pattern.c_str(), 0, nullptr, &matches);
    std::vector<std::string> found;
    if (r == 0)
      for (size_t i = 0; i < matches.gl_pathc; ++i)
        if (fs::is_regular_file(matches.gl_pathv[i])) found.push_back(matches.gl_pathv[i]);
    globfree(&matches);
    CONSA_CHECK(!found.empty(), pattern, ": the pattern matches no input file");
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

int64_t total_bytes(const std::vector<std::string>& files) {
  int64_t total = 0;
  for (const auto& f : files) total += static_cast<int64_t>(fs::file_size(f));
  return total;
}

// One open input file, decompressed as its name says (.gz, .zst), read in blocks.
struct CorpusReader::Stream {
  std::string path;
  FILE* file = nullptr;
  std::vector<char> in, out;  // compressed input and decompressed output buffers
  size_t out_begin = 0, out_end = 0;
  bool eof = false;
#if defined(CONSA_WITH_ZLIB)
  gzFile gz = nullptr;
#endif
#if defined(CONSA_WITH_ZSTD)
  ZSTD_DStream* zstd = nullptr;
  ZSTD_inBuffer zin{nullptr, 0, 0};
#endif
  enum class Kind { Plain, Gzip, Zstd } kind = Kind::Plain;

  explicit Stream(const std::string& p) : path(p), out(1 << 20) {
    if (ends_with(path, ".gz")) {
#if defined(CONSA_WITH_ZLIB)
      kind = Kind::Gzip;
      gz = gzopen(path.c_str(), "rb");
      CONSA_CHECK(gz != nullptr, path, ": cannot open");
      gzbuffer(gz, 1 << 20);
      return;
#else
      fail(path, ": gzip input needs a consa built with zlib (zlib1g-dev)");
#endif
    }
    if (ends_with(path, ".zst")) {
#if defined(CONSA_WITH_ZSTD)
      kind = Kind::Zstd;
      zstd = ZSTD_createDStream();
      ZSTD_initDStream(zstd);
      in.resize(ZSTD_DStreamInSize());
#else
      fail(path, ": zstd input needs a consa built with libzstd (libzstd-dev)");
#endif
    }
    file = std::fopen(path.c_str(), "rb");
    CONSA_CHECK(file != nullptr, path, ": cannot open (", std::strerror(errno), ")");
  }
  ~Stream() {
    if (file) std::fclose(file);
#if defined(CONSA_WITH_ZLIB)
    if (gz) gzclose(gz);
#endif
#if defined(CONSA_WITH_ZSTD)
    if (zstd) ZSTD_freeDStream(zstd);
#endif
  }

  // Refills `out`; false at the end of the file.
  bool fill() {
    out_begin = out_end = 0;
    if (eof) return false;
    switch (kind) {
      case Kind::Plain:
        out_end = std::fread(out.data(), 1, out.size(), file);
        CONSA_CHECK(!std::ferror(file), path, ": read error");
        break;
      case Kind::Gzip: {
#if defined(CONSA_WITH_ZLIB)
        const int n = gzread(gz, out.data(), static_cast<unsigned>(out.size()));
        int code = Z_OK;
        const char* message = n < 0 ? gzerror(gz, &code) : nullptr;
        CONSA_CHECK(n >= 0, path, ": not a valid gzip file (", message ? message : "read error", ")");
        out_end = static_cast<size_t>(n);
#endif
        break;
      }
      case Kind::Zstd: {
#if defined(CONSA_WITH_ZSTD)
        while (out_end == 0) {
          if (zin.pos == zin.size) {
            const size_t n = std::fread(in.data(), 1, in.size(), file);
            CONSA_CHECK(!std::ferror(file), path, ": read error");
            if (n == 0) break;
            zin = {in.data(), n, 0};
          }
          ZSTD_outBuffer zout{out.data(), out.size(), 0};
          const size_t r = ZSTD_decompressStream(zstd, &zout, &zin);
          CONSA_CHECK(!ZSTD_isError(r), path, ": not a valid zstd file (", ZSTD_getErrorName(r), ")");
          out_end = zout.pos;
        }
#endif
        break;
      }
    }
    if (out_end == 0) eof = true;
    return out_end > 0;
  }

  // The next line without its '\n' (a final line without one too); false at the end.
  bool line(std::string& text) {
    text.clear();
    bool any = false;
    for (;;) {
      if (out_begin == out_end && !fill()) return any;
      any = true;
      const char* begin = out.data() + out_begin;
      const char* nl = static_cast<const char*>(std::memchr(begin, '\n', out_end - out_begin));
      if (nl) {
        text.append(begin, static_cast<size_t>(nl - begin));
        out_begin += static_cast<size_t>(nl - begin) + 1;
        return true;
      }
      text.append(begin, static_cast<size_t>(out.data() + out_end - begin));
      out_begin = out_end;
    }
  }

  // Everything left in the file, byte for byte.
  void rest(std::string& text) {
    do text.append(out.data() + out_begin, out_end - out_begin);
    while (fill());
  }

  // Bytes of the file consumed so far (on disk).
  int64_t position() const {
#if defined(CONSA_WITH_ZLIB)
    if (kind == Kind::Gzip) return static_cast<int64_t>(gzoffset(gz));
#endif
    return file ? static_cast<int64_t>(std::ftell(file)) : 0;
  }
};

CorpusReader::CorpusReader(std::vector<std::string> files, CorpusOptions options)
    : files_(std::move(files)), options_(std::move(options)) {}

CorpusReader::~CorpusReader() = default;

bool CorpusReader::open_next() {
  if (stream_) finished_bytes_ += static_cast<int64_t>(fs::file_size(stream_->path));
  stream_.reset();
  if (next_file_ >= files_.size()) return false;
  const std::string& path = files_[next_file_++];
  stream_ = std::make_unique<Stream>(path);
  line_ = 0;
  form_ = options_.form;
  if (form_ == DocumentForm::Auto)
    form_ = (ends_with(path, ".jsonl") || ends_with(path, ".jsonl.gz") || ends_with(path, ".jsonl.zst")) ? DocumentForm::Jsonl
                                                                                                        : DocumentForm::Lines;
  return true;
}

bool CorpusReader::read_line(std::string& line) {
  for (;;) {
    if (!stream_ && !open_next()) return false;
    if (stream_->line(line)) {
      ++line_;
      return true;
    }
    if (!open_next()) return false;
  }
}

int64_t CorpusReader::bytes_read() const { return finished_bytes_ + (stream_ ? stream_->position() : 0); }

bool CorpusReader::next(std::vector<std::string>& out, int64_t max_bytes) {
  int64_t bytes = 0;
  const size_t before = out.size();
  while (bytes < max_bytes) {
    if (options_.form == DocumentForm::WholeFile) {
      if (!open_next()) break;
      std::string text;
      stream_->rest(text);
      if (text.empty()) {
        ++skipped_;
        continue;
      }
      bytes += static_cast<int64_t>(text.size());
      out.push_back(std::move(text));
      ++documents_;
      continue;
    }
    std::string line;
    if (!read_line(line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (form_ == DocumentForm::Jsonl) {
      if (line.empty()) continue;
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const std::string where = stream_->path + ": line " + std::to_string(line_);
      CONSA_CHECK(!record.is_discarded(), where, ": not valid JSON (JSONL needs one object per line)");
      CONSA_CHECK(record.is_object() && record.contains(options_.text_key), where, ": no \"", options_.text_key,
                  "\" field (set the field with --text-key)");
      const auto& text = record.at(options_.text_key);
      CONSA_CHECK(text.is_string(), where, ": \"", options_.text_key, "\" is not a string");
      line = text.get<std::string>();
    }
    if (line.empty()) {
      ++skipped_;
      continue;
    }
    bytes += static_cast<int64_t>(line.size());
    out.push_back(std::move(line));
    ++documents_;
  }
  return out.size() > before;
}

}  // namespace consa::tokenize
