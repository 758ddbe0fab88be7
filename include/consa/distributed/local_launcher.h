#pragma once
// `consa train --nproc-per-node N ...`: a launcher for users without Python. Starts N ranks of
// this program on this machine with torchrun's environment contract (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT: a free port), waits for
// them, and when one fails stops the others at once, as torchrun does.
#include <string>
#include <vector>

namespace consa::distributed {

// Runs `argv` (argv[0] is ignored: the running executable is started again) as `nproc` local
// ranks. Returns 0 when every rank exits 0; otherwise prints which rank failed and how, and
// returns 1.
int launch_local_ranks(int nproc, const std::vector<std::string>& argv);

// A TCP port on 127.0.0.1 that nothing listens on now.
int free_local_port();

}  // namespace consa::distributed
