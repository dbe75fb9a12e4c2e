#include "outrider/vmm/ct_spec.hpp"

#include <fmt/format.h>

#include <cctype>

#include <algorithm>
#include <set>

#include "outrider/common/names.hpp"
#include "outrider/vmm/ct_json.hpp"

namespace outrider::vmm {

const std::vector<std::string>& knownCapabilities() {
  static const std::vector<std::string> caps = {
      "CAP_CHOWN",           "CAP_DAC_OVERRIDE",    "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
      "CAP_FSETID",          "CAP_KILL",            "CAP_SETGID",          "CAP_SETUID",
      "CAP_SETPCAP",         "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
      "CAP_NET_ADMIN",       "CAP_NET_RAW",         "CAP_IPC_LOCK",        "CAP_IPC_OWNER",
      "CAP_SYS_MODULE",      "CAP_SYS_RAWIO",       "CAP_SYS_CHROOT",      "CAP_SYS_PTRACE",
      "CAP_SYS_PACCT",       "CAP_SYS_ADMIN",       "CAP_SYS_BOOT",        "CAP_SYS_NICE",
      "CAP_SYS_RESOURCE",    "CAP_SYS_TIME",        "CAP_SYS_TTY_CONFIG",  "CAP_MKNOD",
      "CAP_LEASE",           "CAP_AUDIT_WRITE",     "CAP_AUDIT_CONTROL",   "CAP_SETFCAP",
      "CAP_MAC_OVERRIDE",    "CAP_MAC_ADMIN",       "CAP_SYSLOG",          "CAP_WAKE_ALARM",
      "CAP_BLOCK_SUSPEND",   "CAP_AUDIT_READ",      "CAP_PERFMON",         "CAP_BPF",
      "CAP_CHECKPOINT_RESTORE"};
  return caps;
}

namespace {

bool hasDotDot(std::string_view path) {
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (path.substr(i, j - i) == "..") return true;
    i = j + 1;
  }
  return false;
}

}  // namespace

Status validateSpec(const v1::ContainerSpec& s, unsigned hostCpus) {
  if (!validWorkloadName(s.name()))
    return Error{fmt::format("container name '{}' is invalid: 1-64 characters of A-Z a-z 0-9 _ . -, not starting "
                             "with '.' or '-'",
                             s.name())};
  auto bad = [&](std::string msg) { return Error{fmt::format("container '{}': {}", s.name(), msg)}; };
  if (s.image().empty()) return bad("image is missing");
  if (!validWorkloadName(s.image())) return bad(fmt::format("image name '{}' is invalid", s.image()));
  if (!s.image_source().empty() && s.image_source().front() != '/')
    return bad(fmt::format("image_source '{}' must be an absolute path", s.image_source()));
  for (auto& a : s.args())
    if (a.find('\0') != std::string::npos) return bad("an argument contains a NUL byte");
  if (!s.cwd().empty() && (s.cwd().front() != '/' || hasDotDot(s.cwd())))
    return bad(fmt::format("cwd '{}' must be an absolute path without '..'", s.cwd()));
  for (auto& e : s.env()) {
    auto eq = e.find('=');
    if (eq == std::string::npos || eq == 0)
      return bad(fmt::format("env entry '{}' is not KEY=value", e));
    if (e.find('\0') != std::string::npos) return bad("an env entry contains a NUL byte");
  }
  for (auto& m : s.mounts()) {
    if (m.source().empty() || m.source().front() != '/')
      return bad(fmt::format("mount source '{}' must be an absolute host path", m.source()));
    if (m.target().empty() || m.target().front() != '/')
      return bad(fmt::format("mount target '{}' must be an absolute path in the container", m.target()));
    if (hasDotDot(m.target())) return bad(fmt::format("mount target '{}' must not contain '..'", m.target()));
    if (m.target() == "/") return bad("mount target '/' would hide the root filesystem");
  }
  if (s.memory_bytes() != 0 && s.memory_bytes() < kMinMemoryBytes)
    return bad(fmt::format("memory_bytes {} is below the minimum of {} (4 MiB); 0 means unlimited", s.memory_bytes(),
                           kMinMemoryBytes));
  if (s.cpu_millis() > 1000u * std::max(1u, hostCpus))
    return bad(fmt::format("cpu_millis {} exceeds the {} this host has ({} CPUs); 0 means unlimited",
                           s.cpu_millis(), 1000u * std::max(1u, hostCpus), hostCpus));
  if (s.pids_max() > (1u << 22)) return bad(fmt::format("pids_max {} is absurd (max 4194304)", s.pids_max()));
  auto& known = knownCapabilities();
  std::set<std::string> seen;
  for (auto& c : s.capabilities()) {
    if (std::find(known.begin(), known.end(), c) == known.end())
      return bad(fmt::format("unknown capability '{}' (expected a CAP_* name such as CAP_NET_BIND_SERVICE)", c));
    if (!seen.insert(c).second) return bad(fmt::format("capability '{}' is listed twice", c));
  }
  if (!s.hostname().empty() &&
      (s.hostname().size() > 64 || !std::all_of(s.hostname().begin(), s.hostname().end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
      })))
    return bad(fmt::format("hostname '{}' is invalid", s.hostname()));
  if (s.stop_timeout_s() > 3600) return bad(fmt::format("stop_timeout_s {} exceeds 3600", s.stop_timeout_s()));
  if (s.restart() != v1::ContainerSpec::NEVER && s.restart() != v1::ContainerSpec::ON_FAILURE &&
      s.restart() != v1::ContainerSpec::ALWAYS)
    return bad(fmt::format("unknown restart policy {}", static_cast<int>(s.restart())));
  return {};
}

std::string restartName(v1::ContainerSpec::Restart r) {
  switch (r) {
    case v1::ContainerSpec::ON_FAILURE: return "on-failure";
    case v1::ContainerSpec::ALWAYS: return "always";
    default: return "never";
  }
}

std::string specKey(const v1::ContainerSpec& spec) {
  v1::ContainerSpec copy = spec;
  copy.set_stopped(false);
  return copy.SerializeAsString();
}

std::string renderConfigJson(const v1::ContainerSpec& s, const BundleOptions& o) {
  json::Writer w;
  std::vector<std::string> caps(s.capabilities().begin(), s.capabilities().end());
  std::vector<std::string> args(s.args().begin(), s.args().end());
  if (args.empty()) args = o.defaultArgs;
  std::vector<std::string> env(s.env().begin(), s.env().end());
  bool hasPath = std::any_of(env.begin(), env.end(), [](auto& e) { return e.rfind("PATH=", 0) == 0; });
  if (!hasPath) env.insert(env.begin(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");

  w.beginObject();
  w.key("ociVersion").value("1.0.2");
  w.key("process").beginObject();
  w.key("terminal").value(false);
  w.key("user").beginObject().key("uid").value(0).key("gid").value(0).endObject();
  w.key("args").strings(args);
  w.key("env").strings(env);
  w.key("cwd").value(s.cwd().empty() ? std::string("/") : s.cwd());
  w.key("capabilities").beginObject();
  w.key("bounding").strings(caps);
  w.key("effective").strings(caps);
  w.key("permitted").strings(caps);
  w.key("inheritable").strings({});
  w.key("ambient").strings({});
  w.endObject();
  w.key("rlimits").beginArray();
  w.beginObject().key("type").value("RLIMIT_NOFILE").key("hard").value(1024).key("soft").value(1024).endObject();
  w.endArray();
  w.key("noNewPrivileges").value(true);
  w.endObject();  // process

  w.key("root").beginObject().key("path").value(o.rootfsPath).key("readonly").value(s.read_only_root()).endObject();
  w.key("hostname").value(s.hostname().empty() ? s.name() : s.hostname());

  w.key("mounts").beginArray();
  auto mount = [&](const char* dest, const char* type, const char* src, std::vector<std::string> opts) {
    w.beginObject().key("destination").value(dest).key("type").value(type).key("source").value(src);
    w.key("options").strings(opts).endObject();
  };
  mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"});
  mount("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"});
  mount("/dev/pts", "devpts", "devpts", {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"});
  mount("/dev/shm", "tmpfs", "shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"});
  mount("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"});
  mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"});
  mount("/sys/fs/cgroup", "cgroup", "cgroup", {"nosuid", "noexec", "nodev", "relatime", "ro"});
  if (s.read_only_root()) mount("/tmp", "tmpfs", "tmpfs", {"nosuid", "nodev", "mode=1777", "size=65536k"});
  for (auto& m : s.mounts()) {
    std::vector<std::string> opts{"rbind", "nosuid", "nodev"};
    opts.push_back(m.read_only() ? "ro" : "rw");
    w.beginObject().key("destination").value(m.target()).key("type").value("bind").key("source").value(m.source());
    w.key("options").strings(opts).endObject();
  }
  w.endArray();

  w.key("linux").beginObject();
  if (!o.cgroupsPath.empty()) w.key("cgroupsPath").value(o.cgroupsPath);
  w.key("resources").beginObject();
  w.key("devices").beginArray().beginObject().key("allow").value(false).key("access").value("rwm").endObject().endArray();
  if (s.memory_bytes() > 0) {
    w.key("memory").beginObject().key("limit").value(static_cast<std::int64_t>(s.memory_bytes()));
    if (o.memorySwapLimit) w.key("swap").value(static_cast<std::int64_t>(s.memory_bytes()));
    w.endObject();
  }
  if (s.cpu_millis() > 0) {
    // quota/period: 100 ms period, quota in the same unit scaled by the thousandths of a CPU.
    constexpr std::uint64_t period = 100000;
    w.key("cpu").beginObject().key("quota").value(static_cast<std::int64_t>(period * s.cpu_millis() / 1000));
    w.key("period").value(period).endObject();
  }
  if (s.pids_max() > 0) w.key("pids").beginObject().key("limit").value(static_cast<std::int64_t>(s.pids_max())).endObject();
  w.endObject();  // resources
  w.key("namespaces").beginArray();
  for (const char* ns : {"pid", "network", "ipc", "uts", "mount"}) w.beginObject().key("type").value(ns).endObject();
  w.endArray();
  w.key("maskedPaths").strings({"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                                "/proc/scsi"});
  w.key("readonlyPaths").strings({"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"});
  w.endObject();  // linux
  w.endObject();
  return w.str();
}


bool shouldRestart(v1::ContainerSpec::Restart policy, bool exitedCleanly) {
  if (policy == v1::ContainerSpec::ALWAYS) return true;
  if (policy == v1::ContainerSpec::ON_FAILURE) return !exitedCleanly;
  return false;
}

}  // namespace outrider::vmm
