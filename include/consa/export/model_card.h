#pragma once
// The README.md model card of a Hugging Face export: where the model came from, its FA/SWA
// layout, what it saves, how it was made and how to load it.
#include <string>

#include "consa/export/assignment.h"

namespace consa {

struct ModelCardSource {
  std::string model;            // the checkpoint the export was made from
  std::string weights_checksum;  // of those weights (the assignment's when it names them)
  std::string recipe_yaml;      // the run's resolved recipe; empty when not from a run
};

// The card's Markdown for an export of `stored` (the assignment as the export stores it),
// declared as `architecture` in config.json.
std::string model_card(const Assignment& stored, const std::string& architecture, const ModelCardSource& source);

}  // namespace consa
