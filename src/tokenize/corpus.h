#pragma once
// Corpora for consa tokenize: files and globs of plain text (a document per line, or a file per
// document) or JSONL, each possibly gzip- or zstd-compressed, read as a stream of documents.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace consa::tokenize {

// Auto: JSONL for files named *.jsonl (compressed or not), lines otherwise.
enum class DocumentForm { Auto, Lines, WholeFile, Jsonl };

struct CorpusOptions {
  DocumentForm form = DocumentForm::Auto;
  std::string text_key = "text";  // JSONL: the field holding a document's text
};

// The files that `patterns` (paths or globs) name, in order, each glob's matches sorted. Fails
// naming a pattern that matches nothing or a file that cannot be read.
std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns);

// Total bytes of `files` on disk (compressed size for compressed files): the progress total.
int64_t total_bytes(const std::vector<std::string>& files);

// Documents of the files, in order. next() appends up to `max_bytes` of documents' text (at least
// one document) to `out`; false at the end.
class CorpusReader {
 public:
  CorpusReader(std::vector<std::string> files, CorpusOptions options);
  ~CorpusReader();
  bool next(std::vector<std::string>& out, int64_t max_bytes);
  int64_t bytes_read() const;  // on disk, so far
  int64_t documents() const { return documents_; }
  int64_t skipped_empty() const { return skipped_; }

 private:
  bool read_line(std::string& line);  // from the current file, opening the next when needed
  bool open_next();

  struct Stream;
  std::vector<std::string> files_;
  CorpusOptions options_;
  size_t next_file_ = 0;
  std::unique_ptr<Stream> stream_;
  DocumentForm form_ = DocumentForm::Lines;  // of the current file
  int64_t line_ = 0, documents_ = 0, skipped_ = 0, finished_bytes_ = 0;
};

}  // namespace consa::tokenize
