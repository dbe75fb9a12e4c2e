#pragma once
// VM specs: validation, admission against the host, and the libvirt domain XML they become. Pure
// functions (no libvirt), so they are unit-tested directly.
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/local.pb.h"
#include "outrider/v1/workloads.pb.h"

namespace outrider::vmm {

using Code = outrider::v1::LocalError::Code;

/// An Error whose code is a LocalError code, so it maps 1:1 onto the local reply.
inline Error vmError(Code code, std::string message) { return Error{std::move(message), static_cast<int>(code)}; }

/// What the box offers, from /proc and libvirt's capabilities.
struct HostInfo {
  std::uint64_t memTotalMib = 0;
  unsigned threads = 1;
  std::string arch = "x86_64";      // the host's own architecture (an empty VmSpec.arch means this)
  std::set<std::string> archs;      // architectures libvirt has an emulator for
};

struct AdmissionLimits {
  double memoryOvercommit = 1.0;    // sum of managed VMs' memory <= this x MemTotal
  double cpuOvercommit = 1.0;       // vcpus of one VM <= this x host threads
};

inline constexpr unsigned kMaxVcpus = 64;
inline constexpr std::uint64_t kMinMemoryMib = 16;

/// The spec's architecture, or the host's when empty.
std::string effectiveArch(const v1::VmSpec& spec, const HostInfo& host);

/// Everything that can be checked about one spec on its own: name, sizes, paths (absolute, no "..",
/// present on the node), formats, network, architecture. Errors carry BAD_REQUEST, NOT_FOUND or REFUSED.
Status validateSpec(const v1::VmSpec& spec, const HostInfo& host, const AdmissionLimits& limits);

/// Memory admission: would `spec` push the managed VMs' total (`othersMib`, without this VM) beyond
/// memoryOvercommit x MemTotal? REFUSED with the figures if so.
Status admitMemory(const v1::VmSpec& spec, std::uint64_t othersMib, const HostInfo& host,
                   const AdmissionLimits& limits);

/// Escape text for XML content and attribute values.
std::string xmlEscape(std::string_view s);

/// Fingerprint of everything in a spec that goes into the domain definition (not `stopped`), stable
/// across builds and runs: kept in the domain's metadata to tell whether it must be redefined.
std::string specHash(const v1::VmSpec& spec, std::string_view accel);

/// A locally administered unicast MAC in QEMU's 52:54:00 range, derived from the name.
std::string stableMac(std::string_view name);

/// Valid "aa:bb:cc:dd:ee:ff".
bool validMac(std::string_view mac);

inline constexpr std::string_view kMetadataUri = "https://outrider.dev/xmlns/vm/1";
inline constexpr std::string_view kMetadataPrefix = "outrider";

struct DomainParams {
  std::string accel = "tcg";                      // "kvm" -> type='kvm', "tcg" -> type='qemu'
  std::vector<std::filesystem::path> overlays;    // one per spec disk, same order
  std::filesystem::path consoleLog;
  std::string hash;                               // specHash, stored in the metadata
  std::string uuid;                               // the existing domain's, when redefining (else libvirt picks one)
  std::string instance;                           // the defining vmm's instance id, stored in the metadata
};

/// The libvirt domain XML for a spec: every string from the spec is escaped.
std::string domainXml(const v1::VmSpec& spec, const HostInfo& host, const DomainParams& params);

/// The metadata element alone (what virDomainGetMetadata returns for kMetadataUri).
std::string metadataXml(std::string_view hash, std::string_view instance = {});
/// The instance id out of a metadata element, "" if none (domains defined before instance ids).
std::string instanceFromMetadata(std::string_view xml);
/// The hash out of a metadata element, "" if none.
std::string hashFromMetadata(std::string_view xml);

/// 64-bit FNV-1a, as 16 hex digits.
std::string fnv1aHex(std::string_view data);

}  // namespace outrider::vmm
