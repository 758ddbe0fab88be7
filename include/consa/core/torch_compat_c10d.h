#pragma once
// The c10d part of core/torch_compat: what differs between LibTorch versions in the store and
// the process groups (Debian's 1.13: ProcessGroup, TCPStoreOptions with c10::optional, Gloo
// with libgloo-dev; a CUDA LibTorch 2.x: NCCL as a c10d::Backend, no Gloo headers). Only
// src/distributed/ includes this header, so that c10d's headers stay out of every other file.
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "consa/core/torch_compat.h"

#if CONSA_TORCH_AT_LEAST(2, 0)
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

#include <chrono>
#include <string>

namespace consa::compat {

// What collectives run on: one backend's process group.
#if CONSA_TORCH_AT_LEAST(2, 0)
using CollectiveGroup = c10d::Backend;
#else
using CollectiveGroup = c10d::ProcessGroup;
#endif

// Which backends' headers this build has: CMake sets these where it found them.
#ifndef CONSA_C10D_GLOO
#define CONSA_C10D_GLOO 0
#endif
#ifndef CONSA_C10D_NCCL
#define CONSA_C10D_NCCL 0
#endif

// A TCPStore at host:port: the server when `is_server`, a client otherwise. With `world_size`
// > 0 every rank registers and the server waits for all of them; 0 joins a store that another
// process hosts and counts (torchrun's agent).
c10::intrusive_ptr<c10d::Store> tcp_store(const std::string& host, int port, bool is_server, int world_size,
                                          std::chrono::milliseconds timeout);

// A Gloo process group over TCP on the interface that reaches `master_addr` (GLOO_SOCKET_IFNAME
// overrides it); throws on builds without Gloo.
c10::intrusive_ptr<CollectiveGroup> gloo_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                              const std::string& master_addr, std::chrono::milliseconds timeout);

// An NCCL process group on the current CUDA device; throws on builds without NCCL.
c10::intrusive_ptr<CollectiveGroup> nccl_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                              std::chrono::milliseconds timeout);

// Makes cuda:index the current device of this process (NCCL binds to it).
void set_cuda_device(int index);

}  // namespace consa::compat
