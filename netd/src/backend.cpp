// The two WireGuard backends: wireguard-go through its UAPI socket (started and supervised here), and
// kernel WireGuard through generic netlink.
#include "outrider/netd/backend.hpp"

#include <fcntl.h>
#include <linux/wireguard.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "outrider/common/c_handle.hpp"
#include "outrider/common/log.hpp"
#include "outrider/netd/kernel_genl.hpp"
#include "outrider/netd/uapi.hpp"

namespace outrider::netd {

namespace {

using NlSock = CHandle<nl_sock, nl_socket_free>;

// ---- wireguard-go ---------------------------------------------------------------------------------

class UserspaceBackend final : public WireGuardBackend {
 public:
  explicit UserspaceBackend(BackendOptions opts) : opts_(std::move(opts)) {}
  ~UserspaceBackend() override {
    // Children are left running on purpose (tunnels stay up while netd is stopped); reap what is dead.
    for (auto& [name, c] : children_) ::waitpid(c.pid, nullptr, WNOHANG);
  }

  std::string name() const override { return "wireguard-go"; }

  Result<DeviceReady> ensureDevice(const std::string& ifname) override {
    reapExited();
    UapiClient uapi(socketOf(ifname));
    auto it = children_.find(ifname);
    if (it != children_.end() && it->second.exited) {
      LOG_WARN("wireguard-go for {} (pid {}) exited with status {}, restarting", ifname, it->second.pid,
               it->second.status);
      children_.erase(it);
      it = children_.end();
    }
    if (auto pid = uapi.serverPid(); pid.ok()) {
      bool fresh = false;
      if (it != children_.end() && !it->second.announced) {
        it->second.announced = true;
        fresh = true;
        LOG_INFO("wireguard-go for {} is up (pid {})", ifname, *pid);
      } else if (it == children_.end() && !adopted_.count(ifname)) {
        adopted_[ifname] = *pid;
        LOG_INFO("adopted the running wireguard-go for {} (pid {})", ifname, *pid);
      }
      return DeviceReady{true, fresh};
    }
    if (it != children_.end()) {
      if (std::chrono::steady_clock::now() - it->second.started > opts_.startTimeout) {
        ::kill(it->second.pid, SIGKILL);
        ::waitpid(it->second.pid, nullptr, 0);
        children_.erase(it);
        return Error{"wireguard-go for " + ifname + " did not open " + uapi.socket().string() + " within " +
                         std::to_string(opts_.startTimeout.count()) + " ms",
                     ETIMEDOUT};
      }
      return DeviceReady{false, false};
    }
    adopted_.erase(ifname);
    auto pid = spawn(ifname);
    if (!pid) return pid.error();
    children_[ifname] = Child{*pid, std::chrono::steady_clock::now()};
    LOG_INFO("started wireguard-go for {} (pid {})", ifname, *pid);
    return DeviceReady{false, false};
  }

  Status configure(const std::string& ifname, const WgDeviceConfig& cfg) override {
    auto st = UapiClient(socketOf(ifname)).set(cfg);
    if (!st) return Error{"configure " + ifname + ": " + st.error().message, st.error().code};
    return {};
  }

  Result<WgDeviceState> device(const std::string& ifname) override {
    auto d = UapiClient(socketOf(ifname)).get();
    if (!d) return Error{"read " + ifname + ": " + d.error().message, d.error().code};
    return d;
  }

  Status removeDevice(const std::string& ifname) override {
    auto pid = UapiClient(socketOf(ifname)).serverPid();
    if (pid.ok() && *pid > 0) ::kill(*pid, SIGTERM);  // wireguard-go removes its tun device and socket
    if (auto it = children_.find(ifname); it != children_.end()) {
      if (!pid.ok() && !it->second.exited) ::kill(it->second.pid, SIGTERM);
      dying_.push_back(it->second.pid);
      children_.erase(it);
    }
    adopted_.erase(ifname);
    reapExited();
    return {};
  }

 private:
  struct Child {
    pid_t pid = -1;
    std::chrono::steady_clock::time_point started;
    bool announced = false;
    bool exited = false;
    int status = 0;
  };

  std::filesystem::path socketOf(const std::string& ifname) const { return opts_.uapiDir / (ifname + ".sock"); }

  void reapExited() {
    for (auto& [name, c] : children_) {
      if (c.exited) continue;
      int st = 0;
      if (::waitpid(c.pid, &st, WNOHANG) == c.pid) {
        c.exited = true;
        c.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
    }
    std::erase_if(dying_, [](pid_t p) { return ::waitpid(p, nullptr, WNOHANG) != 0; });
  }

  Result<pid_t> spawn(const std::string& ifname) {
    std::vector<std::string> args{opts_.wireguardGo, "-f", ifname};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return errnoError("fork for wireguard-go", errno);
    if (pid == 0) {
      // Own process group: a signal to netd's group (Ctrl-C, a stop of the unit's main process) must not
      // take the tunnels down with it.
      ::setpgid(0, 0);
      int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      // Nothing of netd's may leak into the long-lived child: an inherited listening socket would keep
      // the local API "in use" after netd dies.
      ::syscall(SYS_close_range, 3u, ~0u, 0u);
      ::signal(SIGPIPE, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    return pid;
  }

  BackendOptions opts_;
  std::map<std::string, Child> children_;
  std::map<std::string, pid_t> adopted_;
  std::vector<pid_t> dying_;
};

// ---- kernel ---------------------------------------------------------------------------------------

class KernelBackend final : public WireGuardBackend {
 public:
  KernelBackend(NlSock sock, int family, LinkConfigurator& links)
      : sock_(std::move(sock)), family_(family), links_(links) {}

  std::string name() const override { return "kernel"; }

  Result<DeviceReady> ensureDevice(const std::string& ifname) override {
    auto exists = links_.linkExists(ifname);
    if (!exists) return exists.error();
    if (*exists) return DeviceReady{true, false};
    if (auto st = links_.createLink(ifname, "wireguard"); !st) return st.error();
    return DeviceReady{true, true};
  }

  Status configure(const std::string& ifname, const WgDeviceConfig& cfg) override {
    auto msg = buildWgSetDevice(family_, ifname, cfg);
    if (!msg) return msg.error();
    if (int rc = nl_send_auto(sock_.get(), msg->get()); rc < 0)
      return Error{"configure " + ifname + ": " + nl_geterror(rc), EIO};
    if (int rc = nl_wait_for_ack(sock_.get()); rc < 0)
      return Error{"configure " + ifname + ": " + nl_geterror(rc), EIO};
    return {};
  }

  Result<WgDeviceState> device(const std::string& ifname) override {
    auto msg = buildWgGetDevice(family_, ifname);
    if (!msg) return msg.error();
    WgDeviceState dev;
    Status parsed;
    struct Ctx {
      WgDeviceState* dev;
      Status* st;
    } ctx{&dev, &parsed};
    nl_socket_modify_cb(
        sock_.get(), NL_CB_VALID, NL_CB_CUSTOM,
        [](nl_msg* m, void* arg) noexcept -> int {
          auto* c = static_cast<Ctx*>(arg);
          if (auto st = parseWgGetDevice(m, *c->dev); !st) *c->st = st;
          return NL_OK;
        },
        &ctx);
    if (int rc = nl_send_auto(sock_.get(), msg->get()); rc < 0)
      return Error{"read " + ifname + ": " + nl_geterror(rc), EIO};
    if (int rc = nl_recvmsgs_default(sock_.get()); rc < 0) return Error{"read " + ifname + ": " + nl_geterror(rc), EIO};
    if (!parsed) return parsed.error();
    return dev;
  }

  Status removeDevice(const std::string& ifname) override { return links_.deleteLink(ifname); }

 private:
  NlSock sock_;
  int family_;
  LinkConfigurator& links_;
};

Result<std::pair<NlSock, int>> resolveWireGuardFamily() {
  NlSock s(nl_socket_alloc());
  if (!s) return Error{"nl_socket_alloc", ENOMEM};
  if (int rc = genl_connect(s.get()); rc < 0) return Error{std::string("generic netlink: ") + nl_geterror(rc), EIO};
  int family = genl_ctrl_resolve(s.get(), WG_GENL_NAME);
  if (family < 0)
    return Error{std::string("generic netlink family \"wireguard\": ") + nl_geterror(family), EOPNOTSUPP};
  return std::make_pair(std::move(s), family);
}

}  // namespace

bool kernelWireGuardAvailable() { return resolveWireGuardFamily().ok(); }

Result<std::unique_ptr<WireGuardBackend>> makeBackend(const BackendOptions& opts, LinkConfigurator& links,
                                                      std::string& why) {
  if (opts.mode == "userspace") {
    why = "backend = userspace";
    return std::unique_ptr<WireGuardBackend>(std::make_unique<UserspaceBackend>(opts));
  }
  auto fam = resolveWireGuardFamily();
  if (fam.ok()) {
    why = opts.mode == "kernel" ? "backend = kernel" : "the kernel has WireGuard";
    return std::unique_ptr<WireGuardBackend>(
        std::make_unique<KernelBackend>(std::move(fam->first), fam->second, links));
  }
  if (opts.mode == "kernel")
    return Error{"backend = kernel, but the kernel has no WireGuard (" + fam.error().message + ")", EOPNOTSUPP};
  why = "the kernel has no WireGuard (" + fam.error().message + ")";
  return std::unique_ptr<WireGuardBackend>(std::make_unique<UserspaceBackend>(opts));
}

}  // namespace outrider::netd
