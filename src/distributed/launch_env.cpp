#include "consa/distributed/launch_env.h"

#include <cctype>
#include <cstdlib>

#include "consa/core/error.h"

namespace consa::distributed {

namespace {

constexpr int64_t kDefaultPort = 29500;  // torchrun's

int64_t integer_variable(const char* name, const char* value, int64_t lo, int64_t hi) {
  CONSA_CHECK(value != nullptr && *value != '\0', "environment: ", name, " is not set");
  char* end = nullptr;
  const long long v = std::strtoll(value, &end, 10);
  CONSA_CHECK(end != value && *end == '\0' && v >= lo && v <= hi, "environment: ", name, "='", value,
              "': expected an integer in [", lo, ", ", hi, "]");
  return v;
}

// SLURM_TASKS_PER_NODE: "4(x2),3" -> 4 (this node's count is the first one for the first
// nodes; ranks read SLURM_NTASKS_PER_NODE first where set).
int64_t first_tasks_per_node(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  CONSA_CHECK(digits > 0, "environment: SLURM_TASKS_PER_NODE='", text, "': expected a count such as 4 or 4(x2)");
  return std::stoll(text.substr(0, digits));
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  CONSA_CHECK(!nodelist.empty(), "environment: SLURM_JOB_NODELIST is empty");
  // The first entry ends at a comma outside brackets.
  size_t end = 0;
  int depth = 0;
  for (; end < nodelist.size(); ++end) {
    if (nodelist[end] == '[') ++depth;
    if (nodelist[end] == ']') --depth;
    if (nodelist[end] == ',' && depth == 0) break;
  }
  const std::string first = nodelist.substr(0, end);
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  const size_t close = first.find(']', open);
  CONSA_CHECK(close != std::string::npos, "environment: SLURM_JOB_NODELIST='", nodelist, "': unbalanced '['");
  // "03-05,07" -> "03": the first range's start keeps its zero padding.
  std::string range = first.substr(open + 1, close - open - 1);
  const size_t stop = range.find_first_of("-,");
  const std::string index = range.substr(0, stop);
  CONSA_CHECK(!index.empty(), "environment: SLURM_JOB_NODELIST='", nodelist, "': empty host range");
  return first.substr(0, open) + index + first.substr(close + 1);
}

LaunchEnv launch_env_from(const std::function<const char*(const char*)>& lookup) {
  LaunchEnv env;
  const char* master_addr = lookup("MASTER_ADDR");
  const char* master_port = lookup("MASTER_PORT");
  if (lookup("WORLD_SIZE") != nullptr || lookup("RANK") != nullptr) {
    env.launcher = "torchrun";
    env.world_size = integer_variable("WORLD_SIZE", lookup("WORLD_SIZE"), 1, 1 << 20);
    env.rank = integer_variable("RANK", lookup("RANK"), 0, env.world_size - 1);
    env.local_rank = lookup("LOCAL_RANK") ? integer_variable("LOCAL_RANK", lookup("LOCAL_RANK"), 0, env.world_size - 1) : env.rank;
    env.local_world_size = lookup("LOCAL_WORLD_SIZE")
                               ? integer_variable("LOCAL_WORLD_SIZE", lookup("LOCAL_WORLD_SIZE"), 1, env.world_size)
                               : env.world_size;
    CONSA_CHECK(master_addr != nullptr && *master_addr != '\0', "environment: MASTER_ADDR is not set (RANK and WORLD_SIZE are)");
    env.master_addr = master_addr;
    env.master_port = integer_variable("MASTER_PORT", master_port, 1, 65535);
    const char* agent = lookup("TORCHELASTIC_USE_AGENT_STORE");
    env.agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "true" || std::string(agent) == "1");
  } else if (lookup("SLURM_PROCID") != nullptr && lookup("SLURM_NTASKS") != nullptr) {
    env.launcher = "slurm";
    env.world_size = integer_variable("SLURM_NTASKS", lookup("SLURM_NTASKS"), 1, 1 << 20);
    env.rank = integer_variable("SLURM_PROCID", lookup("SLURM_PROCID"), 0, env.world_size - 1);
    env.local_rank = lookup("SLURM_LOCALID") ? integer_variable("SLURM_LOCALID", lookup("SLURM_LOCALID"), 0, env.world_size - 1) : 0;
    if (const char* per_node = lookup("SLURM_NTASKS_PER_NODE"))
      env.local_world_size = integer_variable("SLURM_NTASKS_PER_NODE", per_node, 1, env.world_size);
    else if (const char* tasks = lookup("SLURM_TASKS_PER_NODE"))
      env.local_world_size = first_tasks_per_node(tasks);
    else
      env.local_world_size = env.world_size;
    if (master_addr != nullptr && *master_addr != '\0') {
      env.master_addr = master_addr;
    } else {
      const char* nodelist = lookup("SLURM_JOB_NODELIST");
      if (nodelist == nullptr) nodelist = lookup("SLURM_NODELIST");
      CONSA_CHECK(nodelist != nullptr, "environment: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set under srun");
      env.master_addr = first_slurm_host(nodelist);
    }
    env.master_port = master_port ? integer_variable("MASTER_PORT", master_port, 1, 65535) : kDefaultPort;
  }
  if (env.distributed())
    CONSA_CHECK(env.local_rank < env.local_world_size, "environment: local rank ", env.local_rank,
                " is outside the node's ", env.local_world_size, " ranks");
  return env;
}

LaunchEnv launch_env() {
  return launch_env_from([](const char* name) { return std::getenv(name); });
}

}  // namespace consa::distributed
