#define CATCH_CONFIG_RUNNER
#include "catch_compat.h"
#include "helpers.h"

int main(int argc, char** argv) {
  const int failed = Catch::Session().run(argc, argv);
  consa_test::remove_scratch_dirs();
  return failed;
}
