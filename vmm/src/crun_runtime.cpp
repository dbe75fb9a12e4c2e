#include "outrider/vmm/crun_runtime.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/unique_fd.hpp"
#include "outrider/vmm/ct_json.hpp"

extern char** environ;

namespace outrider::vmm {

namespace fs = std::filesystem;

namespace {

std::string firstLine(const std::string& s) {
  auto t = s;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

}  // namespace

std::optional<fs::path> findProgram(const std::string& program) {
  if (program.empty()) return std::nullopt;
  if (program.find('/') != std::string::npos) {
    if (::access(program.c_str(), X_OK) == 0) return fs::path(program);
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t j = p.find(':', i);
    if (j == std::string::npos) j = p.size();
    fs::path cand = fs::path(p.substr(i, j - i)) / program;
    if (!p.substr(i, j - i).empty() && ::access(cand.c_str(), X_OK) == 0) return cand;
    i = j + 1;
  }
  return std::nullopt;
}

Result<CommandResult> runCommand(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                                 const fs::path& stdoutFile) {
  if (argv.empty()) return Error{"run: empty command"};
  auto exe = findProgram(argv[0]);
  if (!exe) return Error{"run " + argv[0] + ": not found"};
  int outp[2], errp[2];
  if (::pipe2(outp, O_CLOEXEC) != 0) return errnoError("pipe", errno);
  UniqueFd outR(outp[0]), outW(outp[1]);
  if (::pipe2(errp, O_CLOEXEC) != 0) return errnoError("pipe", errno);
  UniqueFd errR(errp[0]), errW(errp[1]);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (stdoutFile.empty())
    posix_spawn_file_actions_adddup2(&fa, outW.get(), 1);
  else
    posix_spawn_file_actions_addopen(&fa, 1, stdoutFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, errW.get(), 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dflt;
  sigemptyset(&none);
  sigemptyset(&dflt);
  sigaddset(&dflt, SIGPIPE);
  sigaddset(&dflt, SIGCHLD);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dflt);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  std::vector<std::string> store(argv);
  for (auto& a : store) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe->c_str(), &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return errnoError("run " + argv[0], rc);
  outW.reset();
  errW.reset();

  CommandResult res;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timedOut = false;
  int open = 2;
  while (open > 0) {
    pollfd pf[2] = {{outR.get(), POLLIN, 0}, {errR.get(), POLLIN, 0}};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timedOut = true;
      ::kill(pid, SIGKILL);
      break;
    }
    int n = ::poll(pf, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t r = ::read(pf[i].fd, buf, sizeof buf);
      if (r > 0) {
        (i == 0 ? res.out : res.err).append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
        (i == 0 ? outR : errR).reset();
        --open;
      }
    }
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timedOut) return Error{"run " + argv[0] + ": timed out after " + std::to_string(timeout.count()) + " ms"};
  res.exitCode = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return res;
}

CrunRuntime::CrunRuntime(std::string crun, fs::path root, fs::path shim)
    : crun_(std::move(crun)), root_(std::move(root)), shim_(std::move(shim)) {}

bool CrunRuntime::available() const { return findProgram(crun_).has_value(); }

Result<CommandResult> CrunRuntime::crun(std::vector<std::string> args) {
  std::vector<std::string> argv{crun_, "--root", root_.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return runCommand(argv);
}

Result<std::vector<RuntimeContainer>> CrunRuntime::list() {
  std::vector<RuntimeContainer> out;
  std::error_code ec;
  if (!fs::exists(root_, ec)) return out;  // crun never ran with this root: nothing to list
  auto r = crun({"list", "--format", "json"});
  if (!r) return r.error();
  if (r->exitCode != 0) return Error{"crun list: " + firstLine(r->err)};
  std::string text = r->out;
  if (text.find_first_not_of(" \n\t") == std::string::npos) return out;
  auto doc = json::parse(text);
  if (!doc) return Error{"crun list: " + doc.error().message};
  for (auto& c : doc->array())
    out.push_back({c["id"].string(), c["status"].string(), static_cast<int>(c["pid"].number())});
  return out;
}

Status CrunRuntime::launch(const std::string& id, const fs::path& bundle, std::uint64_t logMaxBytes) {
  if (auto st = makeDirs(root_, 0700); !st) return st;
  std::vector<std::string> argv{shim_.string(), "--crun",   crun_,
                                "--root",       root_.string(), "--bundle",
                                bundle.string(), "--id",    id,
                                "--log-max",    std::to_string(logMaxBytes)};
  fs::path shimLog = bundle / "shim.log";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, shimLog.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dflt;
  sigemptyset(&none);
  sigfillset(&dflt);
  sigdelset(&dflt, SIGKILL);
  sigdelset(&dflt, SIGSTOP);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dflt);
  // Its own session: the supervisor must not go down with vmm's process group or terminal.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, shim_.c_str(), &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return errnoError("start supervisor " + shim_.string() + " for container " + id, rc);
  children_.push_back(pid);
  return {};
}

void CrunRuntime::reapChildren() {
  children_.erase(std::remove_if(children_.begin(), children_.end(),
                                 [](pid_t p) {
                                   int st = 0;
                                   pid_t r = ::waitpid(p, &st, WNOHANG);
                                   return r == p || (r < 0 && errno == ECHILD);
                                 }),
                  children_.end());
}

Status CrunRuntime::kill(const std::string& id, const std::string& signal) {
  auto r = crun({"kill", id, signal});
  if (!r) return r.error();
  if (r->exitCode != 0) return Error{"crun kill " + id + " " + signal + ": " + firstLine(r->err)};
  return {};
}

Status CrunRuntime::remove(const std::string& id) {
  std::error_code ec;
  if (!fs::exists(root_ / id, ec)) return {};
  auto r = crun({"delete", "-f", id});
  if (!r) return r.error();
  if (r->exitCode != 0 && fs::exists(root_ / id, ec)) return Error{"crun delete " + id + ": " + firstLine(r->err)};
  return {};
}

std::optional<ShimStatus> CrunRuntime::status(const fs::path& bundle) {
  auto text = readFile(bundle / "status", 64 * 1024);
  if (!text) return std::nullopt;
  return parseShimStatus(*text);
}

}  // namespace outrider::vmm
