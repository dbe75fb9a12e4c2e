#include "outrider/vmm/vm_spec.hpp"

#include <fmt/format.h>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cctype>
#include <cmath>
#include <system_error>

#include "outrider/common/names.hpp"

namespace outrider::vmm {

namespace fs = std::filesystem;
using v1::LocalError;

namespace {

bool hasDotDot(std::string_view p) {
  for (const auto& part : fs::path(p)) {
    if (part == "..") return true;
  }
  return false;
}

// An absolute path without "..", and (when `mustExist`) a regular file on the node.
Status checkPath(std::string_view what, std::string_view p, bool mustExist) {
  if (p.empty()) return vmError(LocalError::BAD_REQUEST, fmt::format("{} is empty", what));
  if (p.front() != '/') return vmError(LocalError::BAD_REQUEST, fmt::format("{} '{}' is not an absolute path", what, p));
  if (hasDotDot(p)) return vmError(LocalError::BAD_REQUEST, fmt::format("{} '{}' contains '..'", what, p));
  if (p.find('\0') != std::string_view::npos || p.find('\n') != std::string_view::npos)
    return vmError(LocalError::BAD_REQUEST, fmt::format("{} contains a control character", what));
  if (mustExist) {
    std::error_code ec;
    auto st = fs::status(fs::path(p), ec);
    if (ec || !fs::exists(st))
      return vmError(LocalError::NOT_FOUND, fmt::format("{} '{}' does not exist on this node", what, p));
    if (!fs::is_regular_file(st))
      return vmError(LocalError::BAD_REQUEST, fmt::format("{} '{}' is not a regular file", what, p));
  }
  return {};
}

bool validBridgeName(std::string_view b) {
  if (b.empty() || b.size() > 15) return false;
  for (char c : b) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

std::string effectiveArch(const v1::VmSpec& spec, const HostInfo& host) {
  return spec.arch().empty() ? host.arch : spec.arch();
}

Status validateSpec(const v1::VmSpec& spec, const HostInfo& host, const AdmissionLimits& limits) {
  if (!validWorkloadName(spec.name()))
    return vmError(LocalError::BAD_REQUEST,
                   fmt::format("VM name '{}' is invalid: 1-64 characters of [A-Za-z0-9_.-], not starting with '.' "
                               "or '-'",
                               xmlEscape(spec.name().substr(0, 80))));
  const std::string& n = spec.name();
  if (spec.vcpus() == 0) return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: vcpus must be at least 1", n));
  if (spec.vcpus() > kMaxVcpus)
    return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: {} vcpus is more than {}", n, spec.vcpus(), kMaxVcpus));
  double maxVcpus = std::floor(host.threads * limits.cpuOvercommit);
  if (spec.vcpus() > maxVcpus)
    return vmError(LocalError::REFUSED,
                   fmt::format("VM {}: {} vcpus is more than this host's {} threads x cpu_overcommit {}", n,
                               spec.vcpus(), host.threads, limits.cpuOvercommit));
  if (spec.memory_mib() < kMinMemoryMib)
    return vmError(LocalError::BAD_REQUEST,
                   fmt::format("VM {}: memory {} MiB is less than {} MiB", n, spec.memory_mib(), kMinMemoryMib));
  if (spec.memory_mib() > (std::uint64_t{1} << 30))
    return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: memory {} MiB is absurd", n, spec.memory_mib()));

  std::string arch = effectiveArch(spec, host);
  if (arch != "x86_64" && arch != "aarch64")
    return vmError(LocalError::BAD_REQUEST,
                   fmt::format("VM {}: architecture '{}' is not supported (x86_64 or aarch64)", n, xmlEscape(arch)));
  if (!host.archs.count(arch))
    return vmError(LocalError::REFUSED,
                   fmt::format("VM {}: this node cannot run {} guests (no emulator for it in libvirt's capabilities)",
                               n, arch));

  if (spec.has_kernel()) {
    if (auto st = checkPath(fmt::format("VM {}: kernel", n), spec.kernel().kernel(), true); !st) return st;
    if (!spec.kernel().initrd().empty())
      if (auto st = checkPath(fmt::format("VM {}: initrd", n), spec.kernel().initrd(), true); !st) return st;
    if (spec.kernel().cmdline().size() > 4096)
      return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: kernel cmdline longer than 4096 bytes", n));
  } else if (spec.disks_size() == 0) {
    return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: neither a kernel nor a disk to boot from", n));
  }
  if (spec.disks_size() > 16) return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: more than 16 disks", n));
  for (int i = 0; i < spec.disks_size(); ++i) {
    const auto& d = spec.disks(i);
    if (auto st = checkPath(fmt::format("VM {}: disk {} base image", n, i), d.base_image(), true); !st) return st;
    if (!d.format().empty() && d.format() != "qcow2" && d.format() != "raw")
      return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: disk {} format '{}' is not qcow2 or raw", n, i,
                                                          xmlEscape(d.format())));
    if (d.size_mib() > (std::uint64_t{1} << 24))
      return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: disk {} size {} MiB is absurd", n, i, d.size_mib()));
  }
  if (spec.has_network()) {
    const auto& net = spec.network();
    if (net.mode() == v1::VmNetwork::BRIDGE && !validBridgeName(net.bridge()))
      return vmError(LocalError::BAD_REQUEST,
                     fmt::format("VM {}: bridge name '{}' is invalid", n, xmlEscape(net.bridge())));
    if (!net.mac().empty() && !validMac(net.mac()))
      return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: MAC '{}' is invalid", n, xmlEscape(net.mac())));
    if (net.mode() != v1::VmNetwork::NONE && net.mode() != v1::VmNetwork::BRIDGE && net.mode() != v1::VmNetwork::USER)
      return vmError(LocalError::BAD_REQUEST, fmt::format("VM {}: unknown network mode {}", n, net.mode()));
  }
  return {};
}

Status admitMemory(const v1::VmSpec& spec, std::uint64_t othersMib, const HostInfo& host,
                   const AdmissionLimits& limits) {
  double cap = static_cast<double>(host.memTotalMib) * limits.memoryOvercommit;
  double want = static_cast<double>(othersMib) + static_cast<double>(spec.memory_mib());
  if (want > cap)
    return vmError(LocalError::REFUSED,
                   fmt::format("VM {}: {} MiB would bring managed VMs to {} MiB, more than {:.0f} MiB (MemTotal {} MiB "
                               "x memory_overcommit {})",
                               spec.name(), spec.memory_mib(), othersMib + spec.memory_mib(), cap, host.memTotalMib,
                               limits.memoryOvercommit));
  return {};
}

std::string xmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // XML 1.0 cannot carry most control characters at all, not even escaped.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += "&#xFFFD;";
        else
          out += c;
    }
  }
  return out;
}

std::string fnv1aHex(std::string_view data) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

std::string specHash(const v1::VmSpec& spec, std::string_view accel) {
  v1::VmSpec copy = spec;
  copy.set_stopped(false);
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    copy.SerializeToCodedStream(&cos);
  }
  bytes += '\0';
  bytes += accel;
  return fnv1aHex(bytes);
}

std::string stableMac(std::string_view name) {
  std::string h = fnv1aHex(name);
  return fmt::format("52:54:00:{}:{}:{}", h.substr(0, 2), h.substr(2, 2), h.substr(4, 2));
}

bool validMac(std::string_view mac) {
  if (mac.size() != 17) return false;
  for (std::size_t i = 0; i < mac.size(); ++i) {
    char c = mac[i];
    if (i % 3 == 2) {
      if (c != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  // Multicast MACs cannot be a NIC's address.
  int first = std::stoi(std::string(mac.substr(0, 2)), nullptr, 16);
  return (first & 1) == 0;
}

std::string metadataXml(std::string_view hash, std::string_view instance) {
  std::string inst = instance.empty() ? std::string()
                                      : fmt::format("<{0}:instance>{1}</{0}:instance>", kMetadataPrefix, xmlEscape(instance));
  return fmt::format("<{0}:vm xmlns:{0}=\"{1}\"><{0}:spec-hash>{2}</{0}:spec-hash>{3}</{0}:vm>", kMetadataPrefix,
                     kMetadataUri, xmlEscape(hash), inst);
}

std::string instanceFromMetadata(std::string_view xml) {
  auto pos = xml.find("instance>");
  if (pos == std::string_view::npos) return "";
  pos += 9;
  auto end = xml.find('<', pos);
  if (end == std::string_view::npos) return "";
  return std::string(xml.substr(pos, end - pos));
}

std::string hashFromMetadata(std::string_view xml) {
  // libvirt hands the element back with its own prefix choice; find the spec-hash element by local name.
  auto pos = xml.find("spec-hash>");
  if (pos == std::string_view::npos) return "";
  pos += 10;
  auto end = xml.find('<', pos);
  if (end == std::string_view::npos) return "";
  return std::string(xml.substr(pos, end - pos));
}

std::string domainXml(const v1::VmSpec& spec, const HostInfo& host, const DomainParams& p) {
  const std::string arch = effectiveArch(spec, host);
  const std::string machine = arch == "aarch64" ? "virt" : "q35";
  std::string x;
  auto add = [&x](std::string_view s) { x += s; };
  add(fmt::format("<domain type='{}'>\n", p.accel == "kvm" ? "kvm" : "qemu"));
  add(fmt::format("  <name>{}</name>\n", xmlEscape(spec.name())));
  if (!p.uuid.empty()) add(fmt::format("  <uuid>{}</uuid>\n", xmlEscape(p.uuid)));
  add(fmt::format("  <metadata>{}</metadata>\n", metadataXml(p.hash, p.instance)));
  add(fmt::format("  <memory unit='MiB'>{}</memory>\n", spec.memory_mib()));
  add(fmt::format("  <vcpu>{}</vcpu>\n", spec.vcpus()));
  add("  <os>\n");
  add(fmt::format("    <type arch='{}' machine='{}'>hvm</type>\n", xmlEscape(arch), machine));
  if (spec.has_kernel()) {
    add(fmt::format("    <kernel>{}</kernel>\n", xmlEscape(spec.kernel().kernel())));
    if (!spec.kernel().initrd().empty()) add(fmt::format("    <initrd>{}</initrd>\n", xmlEscape(spec.kernel().initrd())));
    if (!spec.kernel().cmdline().empty())
      add(fmt::format("    <cmdline>{}</cmdline>\n", xmlEscape(spec.kernel().cmdline())));
  } else {
    add("    <boot dev='hd'/>\n");
  }
  add("  </os>\n");
  // Without ACPI a guest's poweroff halts the CPU but the domain stays "running", and ACPI shutdown
  // (graceful stop) has nothing to talk to.
  add("  <features><acpi/>");
  if (arch == "aarch64") add("<gic version='3'/>");
  add("</features>\n");
  if (arch == "aarch64") add("  <cpu mode='custom' match='exact'><model fallback='allow'>cortex-a57</model></cpu>\n");
  add("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
  add("  <devices>\n");
  for (int i = 0; i < spec.disks_size() && i < static_cast<int>(p.overlays.size()); ++i) {
    add("    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n");
    add(fmt::format("      <source file='{}'/>\n", xmlEscape(p.overlays[static_cast<std::size_t>(i)].string())));
    add(fmt::format("      <target dev='vd{}' bus='virtio'/>\n    </disk>\n", static_cast<char>('a' + i)));
  }
  if (spec.has_network() && spec.network().mode() != v1::VmNetwork::NONE) {
    const auto& net = spec.network();
    std::string mac = net.mac().empty() ? stableMac(spec.name()) : net.mac();
    if (net.mode() == v1::VmNetwork::BRIDGE) {
      add("    <interface type='bridge'>\n");
      add(fmt::format("      <source bridge='{}'/>\n", xmlEscape(net.bridge())));
    } else {
      add("    <interface type='user'>\n");
    }
    add(fmt::format("      <mac address='{}'/>\n      <model type='virtio'/>\n    </interface>\n", xmlEscape(mac)));
  }
  // The console goes to a file that vmm reads for vm_console and keeps under its size cap; append='off'
  // starts each boot with an empty log.
  add("    <serial type='file'>\n");
  add(fmt::format("      <source path='{}' append='off'/>\n", xmlEscape(p.consoleLog.string())));
  add("      <target port='0'/>\n    </serial>\n");
  add("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
  add("  </devices>\n</domain>\n");
  return x;
}

}  // namespace outrider::vmm
