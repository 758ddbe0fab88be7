#include "consa/core/torch_compat_c10d.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>

// CONSA_C10D_GLOO / CONSA_C10D_NCCL say which backends' headers this build has (CMake checks);
// LibTorch's own USE_C10D_* may be set by its CMake files whether or not the headers came along.
#if CONSA_C10D_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if CONSA_C10D_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#if CONSA_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "consa/core/error.h"

namespace consa::compat {

c10::intrusive_ptr<c10d::Store> tcp_store(const std::string& host, int port, bool is_server, int world_size,
                                          std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = is_server;
  options.timeout = timeout;
  if (world_size > 0) {
    // Every rank registers (the server counts itself) and the server waits for all of them.
    options.numWorkers = static_cast<std::size_t>(world_size);
    options.waitWorkers = true;
  } else {
    options.waitWorkers = false;  // another process's store (torchrun's agent): join it as is
  }
  return c10::make_intrusive<c10d::TCPStore>(host, options);
}

c10::intrusive_ptr<CollectiveGroup> gloo_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                              const std::string& master_addr, std::chrono::milliseconds timeout) {
#if CONSA_C10D_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface != nullptr && *interface != '\0')
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  else if (master_addr == "localhost" || master_addr.rfind("127.", 0) == 0)
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
#else
  fail("distributed.backend: gloo: this build of consa has no Gloo (its LibTorch ships no Gloo headers); use nccl on CUDA");
#endif
}

c10::intrusive_ptr<CollectiveGroup> nccl_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                              std::chrono::milliseconds timeout) {
#if CONSA_C10D_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
  fail("distributed.backend: nccl: this build of consa has no NCCL (a CPU LibTorch); use gloo");
#endif
}

void set_cuda_device(int index) {
#if CONSA_WITH_CUDA
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#else
  fail("cuda:", index, ": this build of consa has no CUDA");
#endif
}

}  // namespace consa::compat
