#include "outrider/common/manifest.hpp"

#include "toml_type_name.hpp"

#include <toml++/toml.h>

#include <fmt/format.h>

#include <cmath>
#include <set>

#include "outrider/common/names.hpp"
#include "outrider/common/tunnel_spec.hpp"

namespace outrider {



namespace {

// ---------------------------------------------------------------- checks on the protobuf form
// Each returns "field: problem"; the caller prefixes the item ("vm 'web': ") and, from TOML, the line.

constexpr std::uint64_t kMaxVcpus = 64;
constexpr std::uint64_t kMinVmMemoryMib = 16;
constexpr std::uint64_t kMaxVmMemoryMib = 4u << 20;  // 4 TiB
constexpr std::uint64_t kMaxDiskMib = 64ull << 20;   // 64 TiB
constexpr std::uint64_t kMaxLogBytes = 1ull << 30;
constexpr std::uint64_t kMinContainerMemory = 4ull << 20;
constexpr std::uint32_t kMaxStopTimeoutS = 3600;

bool safeAbsolutePath(const std::string& p) {
  if (p.empty() || p.front() != '/' || p.size() > 4096) return false;
  if (p.find('\0') != std::string::npos) return false;
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    if (p.compare(i, j - i, "..") == 0 && j - i == 2) return false;
    i = j + 1;
  }
  return true;
}

bool validMac(const std::string& m) {
  if (m.size() != 17) return false;
  for (std::size_t i = 0; i < 17; ++i) {
    if (i % 3 == 2) {
      if (m[i] != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(m[i]))) {
      return false;
    }
  }
  return true;
}

bool validBridge(const std::string& b) {
  if (b.empty() || b.size() > 15) return false;
  for (char c : b)
    if (c == '/' || c == ' ' || c == ':' || static_cast<unsigned char>(c) < 0x21) return false;
  return b != "." && b != "..";
}

bool validCapability(const std::string& c) {
  if (c.size() < 5 || c.size() > 40 || c.compare(0, 4, "CAP_") != 0) return false;
  for (char ch : c)
    if (!((ch >= 'A' && ch <= 'Z') || ch == '_')) return false;
  return true;
}

bool validHostname(const std::string& h) {
  if (h.size() > 63) return false;
  for (char c : h)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) return false;
  return true;
}

Status fieldError(std::string field, std::string what) { return Error{std::move(field) + ": " + std::move(what)}; }

Status checkVm(const v1::VmSpec& vm) {
  if (!validWorkloadName(vm.name()))
    return fieldError("name", "1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'");
  if (vm.vcpus() < 1 || vm.vcpus() > kMaxVcpus)
    return fieldError("vcpus", fmt::format("{} is outside 1..{}", vm.vcpus(), kMaxVcpus));
  if (vm.memory_mib() < kMinVmMemoryMib || vm.memory_mib() > kMaxVmMemoryMib)
    return fieldError("memory_mib", fmt::format("{} is outside {}..{}", vm.memory_mib(), kMinVmMemoryMib, kMaxVmMemoryMib));
  if (!vm.arch().empty() && vm.arch() != "x86_64" && vm.arch() != "aarch64")
    return fieldError("arch", fmt::format("'{}' is not x86_64 or aarch64", vm.arch()));
  for (int i = 0; i < vm.disks_size(); ++i) {
    const auto& d = vm.disks(i);
    auto f = fmt::format("disk[{}].", i);
    if (!safeAbsolutePath(d.base_image()))
      return fieldError(f + "base_image", "an absolute path without '..' is required");
    if (d.size_mib() > kMaxDiskMib) return fieldError(f + "size_mib", fmt::format("{} is above {}", d.size_mib(), kMaxDiskMib));
    if (!d.format().empty() && d.format() != "qcow2" && d.format() != "raw")
      return fieldError(f + "format", fmt::format("'{}' is not qcow2 or raw", d.format()));
  }
  if (vm.has_kernel()) {
    if (!safeAbsolutePath(vm.kernel().kernel())) return fieldError("kernel.path", "an absolute path without '..' is required");
    if (!vm.kernel().initrd().empty() && !safeAbsolutePath(vm.kernel().initrd()))
      return fieldError("kernel.initrd", "an absolute path without '..' is required");
    if (vm.kernel().cmdline().size() > 4096) return fieldError("kernel.cmdline", "longer than 4096 bytes");
  } else if (vm.disks_size() == 0) {
    return fieldError("kernel", "nothing to boot: give a kernel or at least one disk");
  }
  if (vm.network().mode() == v1::VmNetwork::BRIDGE && !validBridge(vm.network().bridge()))
    return fieldError("network.bridge", "a bridge interface name (1-15 characters) is required for mode 'bridge'");
  if (vm.network().mode() != v1::VmNetwork::BRIDGE && !vm.network().bridge().empty())
    return fieldError("network.bridge", "only valid with mode 'bridge'");
  if (!vm.network().mac().empty() && !validMac(vm.network().mac()))
    return fieldError("network.mac", fmt::format("'{}' is not a MAC address like 52:54:00:12:34:56", vm.network().mac()));
  if (vm.console_log_max_bytes() > kMaxLogBytes) return fieldError("console_log_max_bytes", "above 1 GiB");
  return {};
}

Status checkContainer(const v1::ContainerSpec& c) {
  if (!validWorkloadName(c.name()))
    return fieldError("name", "1-64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'");
  if (!validWorkloadName(c.image())) return fieldError("image", "an image name (1-64 characters of [A-Za-z0-9_.-]) is required");
  if (!c.image_source().empty() && !safeAbsolutePath(c.image_source()))
    return fieldError("image_source", "an absolute path without '..' is required");
  if (c.args_size() > 256) return fieldError("args", "more than 256 arguments");
  for (const auto& e : c.env()) {
    auto eq = e.find('=');
    if (eq == std::string::npos || eq == 0) return fieldError("env", fmt::format("'{}' is not KEY=value", e));
  }
  if (!c.cwd().empty() && !safeAbsolutePath(c.cwd())) return fieldError("cwd", "an absolute path without '..' is required");
  for (int i = 0; i < c.mounts_size(); ++i) {
    const auto& m = c.mounts(i);
    if (!safeAbsolutePath(m.source())) return fieldError(fmt::format("mount[{}].source", i), "an absolute path without '..' is required");
    if (!safeAbsolutePath(m.target())) return fieldError(fmt::format("mount[{}].target", i), "an absolute path without '..' is required");
  }
  if (c.cpu_millis() > 1'000'000) return fieldError("cpu_millis", "above 1000 CPUs");
  if (c.memory_bytes() != 0 && c.memory_bytes() < kMinContainerMemory) return fieldError("memory_mib", "below 4 MiB");
  if (c.pids_max() > 4'194'304) return fieldError("pids_max", "above the kernel's limit of 4194304");
  for (const auto& cap : c.capabilities())
    if (!validCapability(cap)) return fieldError("capabilities", fmt::format("'{}' is not a capability name like CAP_NET_BIND_SERVICE", cap));
  if (c.stop_timeout_s() > kMaxStopTimeoutS) return fieldError("stop_timeout_s", "above 3600");
  if (!validHostname(c.hostname())) return fieldError("hostname", "up to 63 characters of [A-Za-z0-9.-]");
  if (c.log_max_bytes() > kMaxLogBytes) return fieldError("log_max_bytes", "above 1 GiB");
  return {};
}

// ---------------------------------------------------------------- TOML reading

struct Bad {
  std::string message;
};

using detail::tomlTypeName;

// One TOML table read as a declarative record: every key asked for, the rest refused.
class Record {
 public:
  Record(const toml::table& t, const std::string& source, std::string what)
      : t_(t), source_(source), what_(std::move(what)) {}

  [[noreturn]] void fail(const toml::node* at, std::string_view key, std::string_view msg) const {
    auto line = at ? at->source().begin.line : t_.source().begin.line;
    std::string where = line ? fmt::format("{}:{}: ", source_, line) : source_ + ": ";
    if (!what_.empty()) where += what_ + ": ";
    throw Bad{where + (key.empty() ? "" : std::string(key) + ": ") + std::string(msg)};
  }
  // Refuse a whole record (after the checks on its protobuf form).
  void check(const Status& s) const {
    if (!s) fail(nullptr, "", s.error().message);
  }

  const toml::node* get(std::string_view key) {
    known_.emplace(key);
    return t_.get(key);
  }
  std::string str(std::string_view key, std::string def = {}) {
    auto* n = get(key);
    if (!n) return def;
    auto v = n->value_exact<std::string>();
    if (!v) fail(n, key, "expected a string, found " + tomlTypeName(*n));
    return *v;
  }
  std::uint64_t uint(std::string_view key, std::uint64_t def, std::uint64_t max) {
    auto* n = get(key);
    if (!n) return def;
    auto v = n->value_exact<std::int64_t>();
    if (!v) fail(n, key, "expected an integer, found " + tomlTypeName(*n));
    if (*v < 0 || static_cast<std::uint64_t>(*v) > max) fail(n, key, fmt::format("{} is outside 0..{}", *v, max));
    return static_cast<std::uint64_t>(*v);
  }
  bool boolean(std::string_view key, bool def = false) {
    auto* n = get(key);
    if (!n) return def;
    auto v = n->value_exact<bool>();
    if (!v) fail(n, key, "expected true or false, found " + tomlTypeName(*n));
    return *v;
  }
  template <class Add>
  void strs(std::string_view key, Add add) {
    auto* n = get(key);
    if (!n) return;
    auto* arr = n->as_array();
    if (!arr) fail(n, key, "expected an array of strings, found " + tomlTypeName(*n));
    for (const auto& el : *arr) {
      auto v = el.value_exact<std::string>();
      if (!v) fail(&el, key, "expected an array of strings, found an element that is " + tomlTypeName(el));
      add(*v);
    }
  }
  // An inline table or a [x.y] table.
  const toml::table* table(std::string_view key) {
    auto* n = get(key);
    if (!n) return nullptr;
    auto* t = n->as_table();
    if (!t) fail(n, key, "expected a table, found " + tomlTypeName(*n));
    return t;
  }
  // An array of tables ([[key]]).
  std::vector<const toml::table*> tables(std::string_view key) {
    std::vector<const toml::table*> out;
    auto* n = get(key);
    if (!n) return out;
    auto* arr = n->as_array();
    if (!arr) fail(n, key, "expected tables ([[" + std::string(key) + "]]), found " + tomlTypeName(*n));
    for (const auto& el : *arr) {
      auto* t = el.as_table();
      if (!t) fail(&el, key, "expected tables ([[" + std::string(key) + "]]), found an element that is " + tomlTypeName(el));
      out.push_back(t);
    }
    return out;
  }
  // Refuse keys nobody asked for (a typo must not be ignored silently).
  void finish() const {
    for (const auto& [k, v] : t_)
      if (!known_.count(std::string(k.str())))
        fail(&v, k.str(), "unknown key (misspelt, or not valid here)");
  }
  const toml::table& raw() const { return t_; }

 private:
  const toml::table& t_;
  const std::string& source_;
  std::string what_;
  std::set<std::string, std::less<>> known_;
};

std::string label(const char* kind, const toml::table& t) {
  auto name = t.get("name") ? t.get("name")->value_exact<std::string>() : std::nullopt;
  return name ? fmt::format("{} '{}'", kind, *name) : std::string(kind);
}

v1::VmSpec readVm(const toml::table& t, const std::string& source) {
  Record r(t, source, label("vm", t));
  v1::VmSpec vm;
  vm.set_name(r.str("name"));
  vm.set_vcpus(static_cast<std::uint32_t>(r.uint("vcpus", 1, kMaxVcpus)));
  vm.set_memory_mib(r.uint("memory_mib", 256, kMaxVmMemoryMib));
  vm.set_arch(r.str("arch"));
  vm.set_autostart(r.boolean("autostart"));
  vm.set_stopped(r.boolean("stopped"));
  vm.set_console_log_max_bytes(r.uint("console_log_max_bytes", 0, kMaxLogBytes));
  if (const auto* k = r.table("kernel")) {
    Record kr(*k, source, label("vm", t) + ": kernel");
    auto* kb = vm.mutable_kernel();
    kb->set_kernel(kr.str("path"));
    kb->set_initrd(kr.str("initrd"));
    kb->set_cmdline(kr.str("cmdline"));
    kr.finish();
  }
  if (const auto* n = r.table("network")) {
    Record nr(*n, source, label("vm", t) + ": network");
    auto* net = vm.mutable_network();
    auto mode = nr.str("mode", "none");
    if (mode == "none") net->set_mode(v1::VmNetwork::NONE);
    else if (mode == "user") net->set_mode(v1::VmNetwork::USER);
    else if (mode == "bridge") net->set_mode(v1::VmNetwork::BRIDGE);
    else nr.fail(n->get("mode"), "mode", fmt::format("'{}' is not none, user or bridge", mode));
    net->set_bridge(nr.str("bridge"));
    net->set_mac(nr.str("mac"));
    nr.finish();
  }
  for (const auto* d : r.tables("disk")) {
    Record dr(*d, source, label("vm", t) + ": disk");
    auto* disk = vm.add_disks();
    disk->set_base_image(dr.str("base_image"));
    disk->set_size_mib(dr.uint("size_mib", 0, kMaxDiskMib));
    disk->set_format(dr.str("format"));
    dr.finish();
  }
  r.finish();
  r.check(checkVm(vm));
  return vm;
}

v1::ContainerSpec readContainer(const toml::table& t, const std::string& source) {
  Record r(t, source, label("container", t));
  v1::ContainerSpec c;
  c.set_name(r.str("name"));
  c.set_image(r.str("image"));
  c.set_image_source(r.str("image_source"));
  r.strs("args", [&](const std::string& s) { c.add_args(s); });
  r.strs("env", [&](const std::string& s) { c.add_env(s); });
  c.set_cwd(r.str("cwd"));
  c.set_read_only_root(r.boolean("read_only_root"));
  c.set_cpu_millis(static_cast<std::uint32_t>(r.uint("cpu_millis", 0, 1'000'000)));
  c.set_memory_bytes(r.uint("memory_mib", 0, 1ull << 32) << 20);
  c.set_pids_max(static_cast<std::uint32_t>(r.uint("pids_max", 0, 4'194'304)));
  r.strs("capabilities", [&](const std::string& s) { c.add_capabilities(s); });
  auto restart = r.str("restart", "never");
  if (restart == "never") c.set_restart(v1::ContainerSpec::NEVER);
  else if (restart == "on-failure") c.set_restart(v1::ContainerSpec::ON_FAILURE);
  else if (restart == "always") c.set_restart(v1::ContainerSpec::ALWAYS);
  else r.fail(t.get("restart"), "restart", fmt::format("'{}' is not never, on-failure or always", restart));
  c.set_stop_timeout_s(static_cast<std::uint32_t>(r.uint("stop_timeout_s", 0, kMaxStopTimeoutS)));
  c.set_stopped(r.boolean("stopped"));
  c.set_hostname(r.str("hostname"));
  c.set_log_max_bytes(r.uint("log_max_bytes", 0, kMaxLogBytes));
  for (const auto* m : r.tables("mount")) {
    Record mr(*m, source, label("container", t) + ": mount");
    auto* mount = c.add_mounts();
    mount->set_source(mr.str("source"));
    mount->set_target(mr.str("target"));
    mount->set_read_only(mr.boolean("read_only"));
    mr.finish();
  }
  r.finish();
  r.check(checkContainer(c));
  return c;
}

v1::TunnelSpec readTunnel(const toml::table& t, const std::string& source) {
  auto iface = t.get("interface") ? t.get("interface")->value_exact<std::string>() : std::nullopt;
  std::string what = iface ? fmt::format("tunnel '{}'", *iface) : std::string("tunnel");
  Record r(t, source, what);
  v1::TunnelSpec s;
  s.set_interface(r.str("interface"));
  r.strs("addresses", [&](const std::string& a) { s.add_addresses(a); });
  s.set_listen_port(static_cast<std::uint32_t>(r.uint("listen_port", 0, 65535)));
  s.set_keepalive_s(static_cast<std::uint32_t>(r.uint("keepalive_s", 0, 3600)));
  s.set_probe_interval_ms(static_cast<std::uint32_t>(r.uint("probe_interval_ms", 0, 600'000)));
  s.set_miss_threshold(static_cast<std::uint32_t>(r.uint("miss_threshold", 0, 1000)));
  s.set_holddown_s(static_cast<std::uint32_t>(r.uint("holddown_s", 0, 86400)));
  s.set_standbys(static_cast<std::uint32_t>(r.uint("standbys", 0, 16)));
  for (const auto* h : r.tables("hub")) {
    Record hr(*h, source, what + ": " + label("hub", *h));
    auto* hub = s.add_hubs();
    hub->set_name(hr.str("name"));
    hub->set_endpoint(hr.str("endpoint"));
    hub->set_public_key(hr.str("public_key"));
    hr.strs("allowed_ips", [&](const std::string& a) { hub->add_allowed_ips(a); });
    hub->set_tier(static_cast<std::uint32_t>(hr.uint("tier", 0, 2)));
    hub->set_probe_address(hr.str("probe_address"));
    hr.finish();
  }
  r.finish();
  if (auto st = validateTunnelSpec(s); !st) {
    // validateTunnelSpec names the tunnel itself.
    auto line = t.source().begin.line;
    throw Bad{(line ? fmt::format("{}:{}: ", source, line) : source + ": ") + st.error().message};
  }
  return s;
}

template <class Items, class NameOf>
Status checkUnique(const Items& items, const char* kind, NameOf nameOf) {
  std::set<std::string> seen;
  for (const auto& it : items)
    if (!seen.insert(nameOf(it)).second) return Error{fmt::format("{} '{}' is listed twice", kind, nameOf(it))};
  return {};
}

Status checkUniqueAll(const v1::NodeManifest& m) {
  if (auto s = checkUnique(m.vms(), "vm", [](const v1::VmSpec& v) { return v.name(); }); !s) return s;
  if (auto s = checkUnique(m.containers(), "container", [](const v1::ContainerSpec& c) { return c.name(); }); !s) return s;
  return checkUnique(m.tunnels(), "tunnel", [](const v1::TunnelSpec& t) { return t.interface(); });
}

toml::table parseToml(std::string_view text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw Bad{fmt::format("{}:{}: {}", source, e.source().begin.line, e.description())};
  }
}

}  // namespace

Result<v1::NodeManifest> parseManifest(std::string_view text, const std::string& source) {
  try {
    toml::table root = parseToml(text, source);
    Record r(root, source, "");
    v1::NodeManifest m;
    auto* version = r.get("version");
    if (!version) r.fail(nullptr, "version", "required (a positive integer that grows with every change)");
    auto v = version->value_exact<std::int64_t>();
    if (!v || *v < 1) r.fail(version, "version", "expected a positive integer");
    m.set_version(static_cast<std::uint64_t>(*v));
    for (const auto* t : r.tables("vm")) *m.add_vms() = readVm(*t, source);
    for (const auto* t : r.tables("container")) *m.add_containers() = readContainer(*t, source);
    for (const auto* t : r.tables("tunnel")) *m.add_tunnels() = readTunnel(*t, source);
    r.finish();
    if (auto s = checkUniqueAll(m); !s) return Error{source + ": " + s.error().message};
    return m;
  } catch (const Bad& b) {
    return Error{b.message};
  }
}

Result<std::vector<v1::TunnelSpec>> parseTunnels(std::string_view text, const std::string& source) {
  try {
    toml::table root = parseToml(text, source);
    Record r(root, source, "");
    std::vector<v1::TunnelSpec> out;
    for (const auto* t : r.tables("tunnel")) out.push_back(readTunnel(*t, source));
    v1::NodeManifest m;
    for (const auto& t : out) *m.add_tunnels() = t;
    if (auto s = checkUniqueAll(m); !s) return Error{source + ": " + s.error().message};
    return out;
  } catch (const Bad& b) {
    return Error{b.message};
  }
}

Status validateManifest(const v1::NodeManifest& m) {
  if (m.version() == 0) return Error{"version: must be a positive integer"};
  for (const auto& vm : m.vms())
    if (auto s = checkVm(vm); !s) return Error{fmt::format("vm '{}': {}", vm.name(), s.error().message)};
  for (const auto& c : m.containers())
    if (auto s = checkContainer(c); !s) return Error{fmt::format("container '{}': {}", c.name(), s.error().message)};
  for (const auto& t : m.tunnels())
    if (auto s = validateTunnelSpec(t); !s) return s;
  return checkUniqueAll(m);
}

}  // namespace outrider
