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

# tokenizer.json support (src/tokenizer/): Oniguruma, the regex engine Hugging Face tokenizers
# uses, and utf8proc for Unicode normalization (Debian: libonig-dev, libutf8proc-dev). Optional:
# without them consa builds and refuses tokenizer.json files, saying what is missing. Found by
# header and library rather than pkg-config, so that an unpacked package prefix works as well.
find_path(CONSA_ONIG_INCLUDE_DIR oniguruma.h)
find_library(CONSA_ONIG_LIBRARY onig)
find_path(CONSA_UTF8PROC_INCLUDE_DIR utf8proc.h)
find_library(CONSA_UTF8PROC_LIBRARY utf8proc)
set(CONSA_WITH_TOKENIZER_JSON OFF)
if(CONSA_ONIG_INCLUDE_DIR AND CONSA_ONIG_LIBRARY AND CONSA_UTF8PROC_INCLUDE_DIR AND CONSA_UTF8PROC_LIBRARY)
  set(CONSA_WITH_TOKENIZER_JSON ON)
endif()
# Compressed corpora for consa tokenize: gzip (zlib) and zstd, both optional in the same way.
find_package(ZLIB)
find_path(CONSA_ZSTD_INCLUDE_DIR zstd.h)
find_library(CONSA_ZSTD_LIBRARY zstd)
message(STATUS "consa: tokenizer.json: ${CONSA_WITH_TOKENIZER_JSON}, gzip input: ${ZLIB_FOUND}, "
               "zstd input: ${CONSA_ZSTD_LIBRARY}")

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
# c10d's backends for distributed training (consa/core/torch_compat_c10d.h): Gloo where its
# headers are (Debian's libgloo-dev; pip LibTorch ships none), NCCL in CUDA builds (pip LibTorch
# has it; its nccl.h comes with the nvidia-nccl wheel beside torch).
find_path(CONSA_GLOO_INCLUDE_DIR gloo/algorithm.h)  # all of Gloo, not the config.h pip LibTorch ships
find_file(CONSA_C10D_GLOO_HEADER torch/csrc/distributed/c10d/ProcessGroupGloo.hpp PATHS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH)
set(CONSA_WITH_GLOO OFF)
if(CONSA_GLOO_INCLUDE_DIR AND CONSA_C10D_GLOO_HEADER)
  set(CONSA_WITH_GLOO ON)
  target_compile_definitions(consa_torch INTERFACE CONSA_C10D_GLOO=1)
  find_library(CONSA_GLOO_LIBRARY gloo)
  if(CONSA_GLOO_LIBRARY)
    target_link_libraries(consa_torch INTERFACE ${CONSA_GLOO_LIBRARY})
  endif()
endif()
set(CONSA_WITH_NCCL OFF)
if(CONSA_TORCH_HAS_CUDA)
  file(GLOB CONSA_NCCL_HINTS "${Torch_DIR}/../../../../nvidia/nccl/include" "${Torch_DIR}/../../../../nvidia/*/include")
  find_path(CONSA_NCCL_INCLUDE_DIR nccl.h HINTS ${CONSA_NCCL_HINTS} ${TORCH_INCLUDE_DIRS})
  find_file(CONSA_C10D_NCCL_HEADER torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp PATHS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH)
  if(CONSA_NCCL_INCLUDE_DIR AND CONSA_C10D_NCCL_HEADER)
    set(CONSA_WITH_NCCL ON)
    target_compile_definitions(consa_torch INTERFACE CONSA_C10D_NCCL=1)
    target_include_directories(consa_torch INTERFACE ${CONSA_NCCL_INCLUDE_DIR})
  endif()
endif()
# consa's own CUDA kernels (src/kernels/cuda/): where LibTorch has CUDA and nvcc is installed.
# Elsewhere every fused operation runs its ATen math path (consa/kernels/fused_ops.h).
set(CONSA_WITH_CUDA_KERNELS OFF)
if(CONSA_TORCH_HAS_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR NOT CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)  # Hopper first; pass -DCMAKE_CUDA_ARCHITECTURES for others
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CONSA_WITH_CUDA_KERNELS ON)
  endif()
endif()
message(STATUS "consa: LibTorch ${Torch_VERSION}, CUDA tests: ${CONSA_TORCH_HAS_CUDA}, CUDA kernels: "
               "${CONSA_WITH_CUDA_KERNELS} (${CMAKE_CUDA_ARCHITECTURES}), c10d Gloo: ${CONSA_WITH_GLOO}, NCCL: ${CONSA_WITH_NCCL}")

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
