#pragma once
// Where this process stands in a distributed job, read from the launcher's environment:
//   torchrun (and `consa train --nproc-per-node N`): RANK, WORLD_SIZE, LOCAL_RANK,
//     LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; TORCHELASTIC_USE_AGENT_STORE=True when
//     torchrun's agent already hosts the store (then every rank connects as a client);
//   SLURM srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE (or
//     SLURM_TASKS_PER_NODE), with MASTER_ADDR/MASTER_PORT from the environment or else the first
//     host of SLURM_JOB_NODELIST and port 29500.
// With none of these set, the process is a job of its own (world size 1, no process group).
#include <cstdint>
#include <functional>
#include <string>

namespace consa::distributed {

struct LaunchEnv {
  std::string launcher = "none";  // "torchrun" (any launcher with torchrun's variables), "slurm", "none"
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;
  std::string master_addr;  // the store's host
  int64_t master_port = 0;
  bool agent_store = false;  // torchrun's agent hosts the store: no rank starts a server

  bool distributed() const { return launcher != "none"; }
  bool hosts_store() const { return rank == 0 && !agent_store; }
};

// Reads the environment through `lookup` (nullptr for unset); throws a one-line consa::Error
// naming the variable when a value is missing or malformed.
LaunchEnv launch_env_from(const std::function<const char*(const char*)>& lookup);
LaunchEnv launch_env();  // from this process's environment

// The first host of a SLURM node list: "gpu[03-05,07],login1" -> "gpu03".
std::string first_slurm_host(const std::string& nodelist);

}  // namespace consa::distributed
