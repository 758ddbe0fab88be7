# Finds consa's dependencies and hides the version differences between the two supported
# environments behind consa:: targets. This file is the one place for build-level differences:
#   - Debian 12: LibTorch 1.13 (CPU), yaml-cpp 0.7 (target `yaml-cpp`), Catch2 2.13;
#   - a CUDA LibTorch 2.x (e.g. inside a PyTorch install), yaml-cpp 0.8 (`yaml-cpp::yaml-cpp`),
#     Catch2 v3.
# The C++-level differences live in include/consa/core/torch_compat.h and tests/catch_compat.h.

find_package(Torch REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(cxxopts REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# LibTorch's own flags (e.g. the C++11 ABI setting of pip builds).
set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} ${TORCH_CXX_FLAGS}")

add_library(consa_torch INTERFACE)
target_link_libraries(consa_torch INTERFACE ${TORCH_LIBRARIES})
add_library(consa::torch ALIAS consa_torch)

# yaml-cpp 0.8 exports yaml-cpp::yaml-cpp; 0.7 exports plain yaml-cpp.
add_library(consa_yaml INTERFACE)
if(TARGET yaml-cpp::yaml-cpp)
  target_link_libraries(consa_yaml INTERFACE yaml-cpp::yaml-cpp)
else()
  target_link_libraries(consa_yaml INTERFACE yaml-cpp)
endif()
add_library(consa::yaml ALIAS consa_yaml)

# Whether this LibTorch can run CUDA kernels: decides if the [cuda] tests are registered.
set(CONSA_TORCH_HAS_CUDA OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES OR CAFFE2_USE_CUDA)
  set(CONSA_TORCH_HAS_CUDA ON)
endif()
if(CONSA_TORCH_HAS_CUDA)
  # CUDA-only LibTorch APIs (the caching allocator's statistics), used in core/torch_compat.cpp.
  target_compile_definitions(consa_torch INTERFACE CONSA_WITH_CUDA=1)
endif()
message(STATUS "consa: LibTorch ${Torch_VERSION}, CUDA kernels: ${CONSA_TORCH_HAS_CUDA}")

if(CONSA_BUILD_TESTS)
  find_package(Catch2 REQUIRED)
  # Catch2 v3 is a compiled library (Catch2::Catch2), v2 a single header (also Catch2::Catch2);
  # tests/test_main.cpp provides main() for both.
  add_library(consa_catch2 INTERFACE)
  target_link_libraries(consa_catch2 INTERFACE Catch2::Catch2)
  if(Catch2_VERSION VERSION_GREATER_EQUAL 3)
    target_compile_definitions(consa_catch2 INTERFACE CONSA_CATCH2_V3=1)
  endif()
  add_library(consa::catch2 ALIAS consa_catch2)
endif()
