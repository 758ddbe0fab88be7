// Data-parallel training: the launch environment, sharded AdamW against plain AdamW, and whole
// multi-process runs (Gloo on localhost) against a single process with the same global batch.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/distributed/communicator.h"
#include "consa/distributed/gradient_buckets.h"
#include "consa/distributed/launch_env.h"
#include "consa/distributed/local_launcher.h"
#include "consa/distributed/sharded_weights.h"
#include "consa/load/pretrained.h"
#include "consa/train/fused_adamw.h"
#include "helpers.h"

using namespace consa;
using namespace consa::distributed;
using namespace consa_test;
using json = nlohmann::json;

namespace {

LaunchEnv env_of(const std::map<std::string, std::string>& vars) {
  return launch_env_from([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

// The tiny CPU recipe, short, logging every step, on passkey data only (every sequence then has
// as many answer tokens, so a mean over 2b sequences is the mean of two means over b).
std::string tiny_args(const std::string& dir, const std::string& extra) {
  return std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml model.path=" + CONSA_SOURCE_DIR +
         "/tests/fixtures/qwen3_norm train.steps=20 train.log_every=1 train.keep_prob_every=1000 "
         "train.checkpoint_every=10 data.synthetic_tasks=[passkey] distributed.timeout_s=60 output.dir=" +
         dir + " " + extra;
}

std::vector<json> metrics(const std::string& dir) {
  std::vector<json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j.contains("ce")) out.push_back(j);
  }
  return out;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(1.0, std::abs(a)); }

double max_json_difference(const json& a, const json& b) {
  if (a.is_number()) return std::abs(a.get<double>() - b.get<double>());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, max_json_difference(a[i], b[i]));
  return worst;
}

// Every logged loss and constraint figure of two runs, step by step, and their final gates and
// (when trained) weights.
void check_same_run(const std::string& a, const std::string& b, bool weights) {
  const auto ma = metrics(a), mb = metrics(b);
  REQUIRE(ma.size() == mb.size());
  REQUIRE(ma.size() >= 20);
  for (size_t i = 0; i < ma.size(); ++i) {
    INFO("step " << ma[i]["step"]);
    CHECK(ma[i]["step"] == mb[i]["step"]);
    for (const char* key : {"ce", "kl", "mse"}) CHECK(relative(ma[i][key], mb[i][key]) < 1e-6);
    if (ma[i]["stage"] == 1) {
      for (const char* key : {"s_hat", "penalty"}) CHECK(relative(ma[i][key], mb[i][key]) < 1e-6);
      CHECK(max_json_difference(ma[i]["lambda1"], mb[i]["lambda1"]) < 1e-6);
      CHECK(max_json_difference(ma[i]["lambda2"], mb[i]["lambda2"]) < 1e-6);
    }
  }
  const json ga = json::parse(read_text(a + "/gates.json")), gb = json::parse(read_text(b + "/gates.json"));
  CHECK(max_json_difference(ga["log_alpha"], gb["log_alpha"]) < 1e-6);
  const json la = json::parse(read_text(a + "/assignment.json"))["layers"], lb = json::parse(read_text(b + "/assignment.json"))["layers"];
  REQUIRE(la.size() == lb.size());
  for (size_t l = 0; l < la.size(); ++l) CHECK(la[l]["units"] == lb[l]["units"]);
  if (!weights) return;
  CausalLM wa = load_pretrained(a + "/model"), wb = load_pretrained(b + "/model");
  auto pb = wb->named_parameters();
  double worst = 0;
  for (const auto& item : wa->named_parameters()) worst = std::max(worst, max_abs_diff(item.value(), pb[item.key()]));
  CHECK(worst < 1e-6);
}

void run_ok(const std::string& args) {
  std::string out, err;
  const int code = run_consa(args, &out, &err);
  INFO("consa " << args << "\n" << err);
  REQUIRE(code == 0);
}

// A consa process started with extra environment variables, its stderr into a file.
struct Child {
  pid_t pid = -1;
  std::string err_path;
};

Child start_consa(const std::string& args, const std::map<std::string, std::string>& vars, const std::string& err_path) {
  Child c{-1, err_path};
  c.pid = ::fork();
  if (c.pid == 0) {
    for (const auto& [k, v] : vars) ::setenv(k.c_str(), v.c_str(), 1);
    const std::string cmd = std::string("exec ") + CONSA_BINARY + " " + args + " >/dev/null 2>" + err_path;
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return c;
}

// Waits up to `seconds`; returns the wait status, or -1 on time-out.
int wait_for(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

// Two ranks of `args` started by hand with torchrun's variables (rank r's stderr in
// root/rank<r>.err), for killing or stopping one of them.
std::vector<Child> start_two_ranks(const std::string& args, const std::string& root) {
  const int port = free_local_port();
  std::vector<Child> ranks;
  for (int rank = 0; rank < 2; ++rank)
    ranks.push_back(start_consa(args,
                                {{"RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", std::to_string(rank)},
                                 {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}},
                                root + "/rank" + std::to_string(rank) + ".err"));
  return ranks;
}

int64_t last_logged_step(const std::string& dir);

// Waits up to two minutes until `dir`'s metrics reach `step`; returns the last step logged.
int64_t wait_until_logged(const std::string& dir, int64_t step) {
  const auto started = std::chrono::steady_clock::now();
  while (last_logged_step(dir) < step && std::chrono::steady_clock::now() - started < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return last_logged_step(dir);
}

int64_t last_logged_step(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  int64_t step = 0;
  for (std::string line; std::getline(in, line);) {
    try {
      step = std::max<int64_t>(step, json::parse(line).value("step", int64_t{0}));
    } catch (const std::exception&) {
      // a line being written
    }
  }
  return step;
}

}  // namespace

TEST_CASE("the launch environment: torchrun, srun, and none", "[distributed]") {
  LaunchEnv none = env_of({});
  CHECK_FALSE(none.distributed());
  CHECK(none.world_size == 1);

  LaunchEnv t = env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "1234"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  CHECK(t.launcher == "torchrun");
  CHECK(t.rank == 3);
  CHECK(t.world_size == 8);
  CHECK(t.local_rank == 1);
  CHECK(t.local_world_size == 2);
  CHECK(t.master_addr == "node1");
  CHECK(t.master_port == 1234);
  CHECK(t.agent_store);
  CHECK_FALSE(t.hosts_store());
  CHECK(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}).hosts_store());

  LaunchEnv s = env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                        {"SLURM_TASKS_PER_NODE", "4(x4)"}, {"SLURM_JOB_NODELIST", "gpu[07-10],login2"}});
  CHECK(s.launcher == "slurm");
  CHECK(s.rank == 5);
  CHECK(s.world_size == 16);
  CHECK(s.local_rank == 1);
  CHECK(s.local_world_size == 4);
  CHECK(s.master_addr == "gpu07");
  CHECK(s.master_port == 29500);
  CHECK(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_ADDR", "x"}, {"MASTER_PORT", "77"},
                {"SLURM_JOB_NODELIST", "a"}}).master_addr == "x");

  // Malformed values are one-line errors naming the variable.
  CHECK_THROWS_WITH(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}),
                    contains("RANK='2'"));
  CHECK_THROWS_WITH(env_of({{"RANK", "0"}, {"WORLD_SIZE", "two"}}), contains("WORLD_SIZE='two'"));
  CHECK_THROWS_WITH(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "5"}}), contains("MASTER_ADDR"));
  CHECK_THROWS_WITH(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}), contains("SLURM_JOB_NODELIST"));
}

TEST_CASE("the first host of a SLURM node list", "[distributed]") {
  CHECK(first_slurm_host("node5") == "node5");
  CHECK(first_slurm_host("gpu[003-010]") == "gpu003");
  CHECK(first_slurm_host("gpu[12,15-17],cpu[1-2]") == "gpu12");
  CHECK(first_slurm_host("rack1-node[4-6].cluster") == "rack1-node4.cluster");
  CHECK(first_slurm_host("a,b[1-2]") == "a");
  CHECK_THROWS_WITH(first_slurm_host("gpu[1-2"), contains("unbalanced"));
}

TEST_CASE("sharded AdamW with clipping equals AdamW on the averaged gradients", "[distributed]") {
  // Three tensors (one larger than a bucket) trained by two ranks in two threads of this process.
  const std::vector<std::vector<int64_t>> shapes = {{7, 5}, {11}, {3, 4, 2}};
  const int64_t world = 2, steps = 6;
  const double lr = 0.05, max_norm = 0.3;
  // Own generators: the ranks' threads must not share the global one.
  auto initial = [&](size_t i) {
    at::Generator g = at::detail::createCPUGenerator(10 + i);
    return at::randn(shapes[i], g);
  };
  // Rank r's loss at step s is sum(x * w) over tensors: its gradient is x, a known tensor.
  auto rank_gradient = [&](size_t i, int64_t rank, int64_t step) {
    at::Generator g = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + 100 * rank) + i);
    return at::randn(shapes[i], g) * (step % 2 ? 3.0 : 0.5);
  };
  auto options = torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(0.1);

  // Reference: plain AdamW, gradients averaged by hand, torch's own clipping.
  std::vector<at::Tensor> reference;
  for (size_t i = 0; i < shapes.size(); ++i) reference.push_back(initial(i).requires_grad_(true));
  torch::optim::AdamW plain(reference, options);
  for (int64_t s = 0; s < steps; ++s) {
    for (size_t i = 0; i < shapes.size(); ++i)
      reference[i].mutable_grad() = (rank_gradient(i, 0, s) + rank_gradient(i, 1, s)) / 2.0;
    torch::nn::utils::clip_grad_norm_(reference, max_norm);
    plain.step();
  }

  const int port = free_local_port();
  std::vector<std::vector<at::Tensor>> results(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  for (int64_t rank = 0; rank < world; ++rank) {
    ranks.emplace_back([&, rank]() {
      try {
        LaunchEnv env = env_of({{"RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                {"MASTER_PORT", std::to_string(port)}});
        auto comm = Communicator::connect(env, "gloo", 60, at::kCPU);
        std::vector<at::Tensor> weights;
        for (size_t i = 0; i < shapes.size(); ++i) weights.push_back(initial(i).requires_grad_(true));
        // 100-byte buckets: several buckets, one tensor spanning a bucket of its own.
        GradientBuckets buckets(comm, weights, 100, GradientBuckets::Reduction::ReduceScatter);
        ShardedWeights sharded(comm, buckets);
        FusedAdamW optimizer(sharded.masters(), options);
        for (int64_t s = 0; s < steps; ++s) {
          for (auto& w : weights) w.mutable_grad() = at::Tensor();
          buckets.arm();
          at::Tensor loss = at::zeros({});
          for (size_t i = 0; i < shapes.size(); ++i) loss = loss + (weights[i] * rank_gradient(i, rank, s)).sum();
          loss.backward();
          buckets.finish();
          sharded.take_gradients();
          const at::Tensor coef = (max_norm / (sharded.squared_gradient_norm().sqrt() + 1e-6)).clamp_max(1.0);
          for (auto& m : sharded.masters()) m.grad().mul_(coef);
          optimizer.step();
          sharded.gather_into_weights();
        }
        for (auto& w : weights) results[rank].push_back(w.detach().clone());
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int64_t rank = 0; rank < world; ++rank) {
    INFO("rank " << rank << ": " << errors[rank]);
    REQUIRE(errors[rank].empty());
    for (size_t i = 0; i < shapes.size(); ++i) {
      CHECK(max_abs_diff(results[rank][i], reference[i]) < 1e-7);
      CHECK(max_abs_diff(results[rank][i], initial(i)) > 1e-2);  // training moved them
    }
  }
}

TEST_CASE("world 2 x micro-batch b equals world 1 x micro-batch 2b", "[distributed]") {
  const std::string root = scratch_dir("dp-equal");
  struct Mode {
    std::string name, extra;
    bool weights;
  };
  const std::vector<Mode> modes = {
      {"gates", "", false},
      {"gates, exact gate updates", "train.overlap_gate_updates=false", false},
      {"full, sharded optimizer", "train.mode=full optimizer.lr=0.002 objective.kl=0 optimizer.grad_clip=0.5", true},
      {"full, replicated optimizer",
       "train.mode=full optimizer.lr=0.002 objective.kl=0 optimizer.grad_clip=0.5 distributed.shard_optimizer=false", true},
      {"gates then recover", "train.steps=10 recover.steps=10 recover.lr=0.002 objective.kl=0", true},
  };
  for (size_t i = 0; i < modes.size(); ++i) {
    const Mode& m = modes[i];
    INFO(m.name);
    const std::string one = root + "/w1_" + std::to_string(i), two = root + "/w2_" + std::to_string(i);
    run_ok("train " + tiny_args(one, m.extra + " data.batch_size=8"));
    run_ok("train " + tiny_args(two, m.extra + " data.batch_size=4") + " --nproc-per-node 2");
    check_same_run(one, two, m.weights);
    CHECK(metrics(two).front()["world_size"] == 2);
    if (m.weights) {
      // The other commands read a distributed run like any other.
      run_ok("export " + two + " --format hf --out " + two + "_hf");
      CausalLM exported = load_pretrained(two + "_hf");
      CHECK_THAT(read_text(two + "_hf/README.md"), contains("## The recipe that made it"));
      CHECK(Assignment::load(two + "_hf/assignment.json").achieved_sparsity() ==
            Assignment::load(one + "/assignment.json").achieved_sparsity());
    }
  }
}

TEST_CASE("torchrun and --nproc-per-node run the same job", "[distributed]") {
  const std::string root = scratch_dir("dp-torchrun");
  run_ok("train " + tiny_args(root + "/ours", "data.batch_size=4") + " --nproc-per-node 2");
  // Debian's torchrun (torch 1.13 on Python 3.11) needs --redirects/--tee set to a stream: its
  // default "0" no longer parses there.
  const std::string cmd = "/usr/bin/python3 -m torch.distributed.run --nproc_per_node 2 --redirects 2 --tee 2 --no_python " +
                          std::string(CONSA_BINARY) + " train " + tiny_args(root + "/torchrun", "data.batch_size=4") +
                          " >" + root + "/torchrun.log 2>&1";
  const int status = std::system(cmd.c_str());
  INFO(read_text(root + "/torchrun.log"));
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  check_same_run(root + "/ours", root + "/torchrun", false);
}

TEST_CASE("a killed rank stops the other within the timeout, and --resume finishes the run exactly", "[distributed]") {
  const std::string root = scratch_dir("dp-kill");
  const std::string long_run = "train.steps=300 train.checkpoint_every=25 data.batch_size=4 distributed.timeout_s=30";
  run_ok("train " + tiny_args(root + "/whole", long_run) + " --nproc-per-node 2");

  const std::string dir = root + "/killed";
  std::vector<Child> ranks = start_two_ranks("train " + tiny_args(dir, long_run), root);
  const int64_t reached = wait_until_logged(dir, 60);
  REQUIRE(reached >= 60);
  REQUIRE(reached < 300);
  ::kill(ranks[1].pid, SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  const int status = wait_for(ranks[0].pid, 45);
  wait_for(ranks[1].pid, 5);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const std::string err = read_text(ranks[0].err_path);
  INFO("rank 0 stderr: " << err);
  REQUIRE(status != -1);  // it stopped by itself
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK(waited < 31);
  // Progress lines, then one error line.
  const std::string last_line = err.substr(err.rfind('\n', err.size() - 2) + 1);
  CHECK_THAT(last_line, contains("consa: error: rank 0: "));
  CHECK(err.find("consa: error:") == err.rfind("consa: error:"));

  run_ok("train " + tiny_args(dir, long_run) + " --nproc-per-node 2 --resume");
  const auto a = metrics(root + "/whole"), b = metrics(dir);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("step " << a[i]["step"]);
    CHECK(a[i]["step"] == b[i]["step"]);
    CHECK(relative(a[i]["ce"], b[i]["ce"]) < 1e-6);
    CHECK(relative(a[i]["s_hat"], b[i]["s_hat"]) < 1e-6);
  }
  CHECK(max_json_difference(json::parse(read_text(root + "/whole/gates.json"))["log_alpha"],
                            json::parse(read_text(dir + "/gates.json"))["log_alpha"]) < 1e-6);
}

TEST_CASE("resuming with another world size: the same global batch continues, a sharded optimizer is refused",
          "[distributed]") {
  const std::string root = scratch_dir("dp-reshape");
  // Gates mode keeps no per-rank state: 2 ranks x 4 stop, 1 rank x 8 finishes, as 2 x 4 would.
  run_ok("train " + tiny_args(root + "/whole", "data.batch_size=4") + " --nproc-per-node 2");
  run_ok("train " + tiny_args(root + "/moved", "data.batch_size=4") + " --nproc-per-node 2 --stop-after 10");
  std::string out, err;
  CHECK(run_consa("train " + tiny_args(root + "/moved", "data.batch_size=4") + " --resume", &out, &err) == 1);
  CHECK_THAT(err, contains("world size 2 with a global batch of 8"));
  CHECK_THAT(err, contains("(world size 1) has 4"));
  run_ok("train " + tiny_args(root + "/moved", "data.batch_size=8") + " --resume");
  check_same_run(root + "/whole", root + "/moved", false);

  // A sharded optimizer's state is split by rank: another world size is refused, naming both.
  const std::string full = "train.mode=full optimizer.lr=0.002 objective.kl=0";
  run_ok("train " + tiny_args(root + "/sharded", full + " data.batch_size=4") + " --nproc-per-node 2 --stop-after 5");
  CHECK(run_consa("train " + tiny_args(root + "/sharded", full + " data.batch_size=8") + " --resume", &out, &err) == 1);
  CHECK_THAT(err, contains("sharded over 2 ranks; this job has world size 1"));
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
  CHECK(run_consa("train " + tiny_args(root + "/sharded", full + " data.batch_size=4 distributed.bucket_mb=7") +
                      " --nproc-per-node 2 --resume", &out, &err) == 1);
  CHECK_THAT(err, contains("follow distributed.bucket_mb 25; this job has 7"));
  run_ok("train " + tiny_args(root + "/sharded", full + " data.batch_size=4") + " --nproc-per-node 2 --resume");
}

TEST_CASE("a NaN loss stops every rank together and writes no checkpoint", "[distributed]") {
  const std::string root = scratch_dir("dp-nan");
  // The test checkpoint with finite but huge final-norm and output weights (NaN weights are
  // refused at load): the logits overflow to Inf, so every loss is NaN.
  {
    CausalLM model = load_pretrained(fixture("qwen3_norm"));
    at::NoGradGuard no_grad;
    model->named_parameters()["model.norm.weight"].fill_(3e38);
    model->named_parameters()["lm_head.weight"].mul_(1e30);
    save_pretrained(model, root + "/huge");
  }
  for (const std::string& launch : {std::string(""), std::string(" --nproc-per-node 2")}) {
    INFO("launch:" << launch);
    const std::string dir = root + "/run" + std::to_string(launch.size());
    std::string out, err;
    CHECK(run_consa("train " + tiny_args(dir, "data.batch_size=4 model.path=" + root + "/huge") + launch, &out, &err) == 1);
    CHECK_THAT(err, contains("the loss became NaN or Inf between steps 1 and 1"));
    CHECK_FALSE(std::filesystem::exists(dir + "/checkpoint.pt"));
  }
}

TEST_CASE("consa sweep --devices runs pairs side by side with the results of a sequential sweep", "[distributed]") {
  const std::string root = scratch_dir("dp-sweep");
  const std::string args = std::string(CONSA_SOURCE_DIR) + "/recipes/tiny_cpu.yaml model.path=" + CONSA_SOURCE_DIR +
                           "/tests/fixtures/qwen3_norm train.steps=20 train.log_every=10 data.heldout_batches=1 "
                           "--targets 0.5,0.75 --methods consa,uniform --tasks passkey --lengths 48 --depths 0.5 "
                           "--samples 4 --value-digits 3 --heldout-batches 1";
  run_ok("sweep " + args + " --out " + root + "/sequential");
  run_ok("sweep " + args + " --out " + root + "/side_by_side --devices cpu,cpu");
  // Every column but the allocation time and the run's folder.
  auto rows = [](const std::string& csv_path) {
    std::vector<std::string> out;
    std::istringstream in(read_text(csv_path));
    for (std::string line; std::getline(in, line);) out.push_back(line.substr(0, line.rfind(',', line.rfind(',') - 1)));
    return out;
  };
  const auto a = rows(root + "/sequential/sweep.csv"), b = rows(root + "/side_by_side/sweep.csv");
  CHECK(a.size() == 5);  // header + 4 pairs
  CHECK(a == b);
  CHECK(std::filesystem::exists(root + "/side_by_side/consa_t0.5/sweep.log"));
  // A rerun finds every pair done.
  std::string out, err;
  REQUIRE(run_consa("sweep " + args + " --out " + root + "/side_by_side --devices cpu,cpu", &out, &err) == 0);
  CHECK_THAT(out, contains("0 run on 2 devices, 4 done earlier"));
}

TEST_CASE("a hung rank stops the other after distributed.timeout_s", "[distributed]") {
  const std::string root = scratch_dir("dp-hang");
  const std::string dir = root + "/run";
  const std::string args = "train " + tiny_args(dir, "train.steps=400 data.batch_size=4 distributed.timeout_s=4");
  std::vector<Child> ranks = start_two_ranks(args, root);
  REQUIRE(wait_until_logged(dir, 20) >= 20);
  ::kill(ranks[1].pid, SIGSTOP);  // alive, but answering nothing
  const auto stopped = std::chrono::steady_clock::now();
  const int status = wait_for(ranks[0].pid, 30);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  ::kill(ranks[1].pid, SIGKILL);
  wait_for(ranks[1].pid, 5);
  const std::string err = read_text(ranks[0].err_path);
  INFO("rank 0 stderr: " << err);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK(waited > 3);   // it waited for the timeout ...
  CHECK(waited < 10);  // ... and not much longer
  CHECK_THAT(err, contains("rank 0: "));
  CHECK_THAT(err, contains("within distributed.timeout_s (4 s)"));
}

TEST_CASE("per-rank gate noise: a draw of its own per rank, deterministic and resumable", "[distributed]") {
  const std::string root = scratch_dir("dp-noise");
  const std::string per_rank = "data.batch_size=4 distributed.gate_noise=per_rank";
  run_ok("train " + tiny_args(root + "/a", per_rank) + " --nproc-per-node 2");
  run_ok("train " + tiny_args(root + "/b", per_rank) + " --nproc-per-node 2 --stop-after 7");
  run_ok("train " + tiny_args(root + "/b", per_rank) + " --nproc-per-node 2 --resume");
  run_ok("train " + tiny_args(root + "/shared", "data.batch_size=4") + " --nproc-per-node 2");
  check_same_run(root + "/a", root + "/b", false);  // the same seed, rank and step give the same draws
  // Other draws than the shared ones: the trajectories part.
  const auto a = metrics(root + "/a"), shared = metrics(root + "/shared");
  double most = 0;
  for (size_t i = 0; i < a.size(); ++i) most = std::max(most, relative(a[i]["ce"], shared[i]["ce"]));
  CHECK(most > 1e-3);
}
