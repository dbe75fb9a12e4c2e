#pragma once
// Updates of the node's own package (docs/updates.md), in three parts:
//  - PackageStore: the package arriving over MQTT in pieces, resumable, checked against its SHA-256;
//  - UpdateState: what the agent and the privileged updater tell each other through files in the
//    update directory (request -> state -> verdict), so that every step survives a restart or kill -9;
//  - runUpdater(): `outrider-agent update-apply`, run as root (outrider-update.service, started by
//    outrider-update.path when the agent writes a request): keeps a rollback package, installs, restarts
//    the daemons, waits for the agent's health verdict, then commits or installs the rollback package.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/result.hpp"
#include "outrider/hooks/spawn.hpp"
#include "outrider/v1/hub.pb.h"

namespace outrider::agent::update {

namespace fs = std::filesystem;

struct UpdateConfig {
  /// Where packages, the rollback package and the state files live (default STATE_DIR/update).
  fs::path dir;
  /// The only package an update may install.
  std::string package = "outrider";
  /// From the restart to the agent's verdict; past it the updater rolls back.
  std::chrono::seconds healthDeadline{120};
  /// Free space kept on the update directory's file system beyond what an update needs.
  std::uint64_t reserveBytes = 32u << 20;
  /// Refused larger.
  std::uint64_t maxPackageBytes = 512u << 20;
  /// How the agent starts the updater: "systemd" (the request file triggers outrider-update.path) or
  /// "spawn" (the agent, running as root, starts `outrider-agent update-apply` detached itself).
  std::string launcher = "systemd";
  /// Run by the updater after installing and after rolling back. Empty: the package's maintainer
  /// scripts restart the units (systemd).
  std::vector<std::string> restartCommand;
  /// The updater's own directory (root, 0700): the package it installs is copied here before it is
  /// checked, and the rollback package lives here, out of the agent's reach.
  fs::path rootDir = "/var/lib/outrider/updater";
  /// The provisioning public key (root's): the operator keys of the provisioning bundle the node kept
  /// count for the updater only when the bundle verifies with it.
  fs::path provisioningKey = "/etc/outrider/provisioning.pub";
};

/// Bytes an update of a `size`-byte package needs free in the update directory before the transfer
/// starts: the rest of the package, the rollback package, the unpacked files (about 4x), and the reserve.
std::uint64_t spaceNeeded(std::uint64_t size, std::uint64_t have, std::uint64_t reserve);

using FreeSpaceFn = std::function<Result<std::uint64_t>(const fs::path&)>;
/// statvfs: bytes available to unprivileged users.
Result<std::uint64_t> freeSpace(const fs::path& dir);

/// The package in transfer: DIR/<sha256 hex>-<size>.part while it arrives, DIR/<sha256 hex>.deb once its
/// digest matched. One transfer at a time: offering another package drops the earlier partial one.
class PackageStore {
 public:
  PackageStore(fs::path dir, std::uint64_t reserveBytes, std::uint64_t maxBytes, FreeSpaceFn free = freeSpace);

  /// OFFER: refused (Error) when the digest or size is invalid or the disk is short; otherwise what the
  /// node holds of it (phase "receiving" with have_bytes, or "received").
  Result<v1::UpdateResult> offer(const crypto::Sha256& digest, std::uint64_t size);
  /// CHUNK: `data` at `offset`, which must equal have_bytes. The last chunk checks the digest; a
  /// mismatch drops the partial file (the transfer starts again) and is an Error.
  Result<v1::UpdateResult> chunk(const crypto::Sha256& digest, std::uint64_t offset, std::string_view data);
  /// The complete, verified package with this digest.
  Result<fs::path> package(const crypto::Sha256& digest) const;
  /// Remove every package file except `keep` (and the state files).
  void prune(const std::optional<crypto::Sha256>& keep);

  const fs::path& dir() const { return dir_; }

 private:
  struct Part {
    fs::path path;
    std::uint64_t size = 0, have = 0;
  };
  std::optional<Part> findPart(const crypto::Sha256& digest) const;

  fs::path dir_;
  std::uint64_t reserve_, max_;
  FreeSpaceFn free_;
};

/// Phases, in order. The agent writes the request and the verdict; the updater writes everything else.
enum class Phase { requested, installing, awaitingHealth, committed, rollingBack, rolledBack, failed };
std::string_view phaseName(Phase p);
std::optional<Phase> parsePhase(std::string_view s);
inline bool finalPhase(Phase p) { return p == Phase::committed || p == Phase::rolledBack || p == Phase::failed; }

/// One update, as the files DIR/request (agent -> updater) and DIR/state (updater -> agent) hold it.
struct UpdateState {
  std::string commandId;
  std::string sha256;            // hex
  fs::path packagePath;
  std::string fromVersion, toVersion;
  Phase phase = Phase::requested;
  std::string reason;            // failed / rolled back: why
  std::string postUpdate;        // the post-update hooks' summary
  std::int64_t requestedAtMs = 0;
  std::int64_t restartedAtMs = 0;  // awaiting health: when the daemons were restarted
  std::int64_t deadlineAtMs = 0;   // awaiting health: the verdict is due then
  std::uint32_t healthDeadlineS = 0;
  /// Health of each daemon before the update ("vmm" -> "HEALTHY"): a daemon healthy before must be
  /// healthy after; one degraded before must at least answer.
  std::map<std::string, std::string> baseline;
  /// The operator's signed INSTALL command as it arrived (the request only): the updater checks it
  /// itself, because it does not trust the unprivileged agent that wrote the request.
  std::string signedCommand;

  std::string encode() const;
  static Result<UpdateState> decode(std::string_view text);
};

/// The agent's health verdict for one update: DIR/verdict.
struct Verdict {
  std::string commandId;
  bool healthy = false;
  std::string reason;            // unhealthy: what failed at the deadline
  std::uint32_t healthMs = 0;    // healthy: from the restart to the verdict

  std::string encode() const;
  static Result<Verdict> decode(std::string_view text);
};

/// The state files' format: "format=1", then key=value lines; newlines and backslashes in values escaped.
namespace record {
std::string escape(std::string_view v);
/// The lines as a map; an Error for a line without '=' or a format other than 1.
Result<std::map<std::string, std::string>> parseLines(std::string_view text);
/// A decimal value; absent or empty = 0.
Result<std::int64_t> toInt(const std::map<std::string, std::string>& kv, const char* key);
/// A value; absent = "".
std::string get(const std::map<std::string, std::string>& kv, const char* key);
/// A file of one record decoded with T::decode: nullopt when it does not exist, an Error naming the file
/// when it cannot be read or does not decode.
template <class T>
Result<std::optional<T>> read(const fs::path& file) {
  auto text = readFile(file, 1 << 20);
  if (!text) {
    if (text.error().code == ENOENT) return std::optional<T>{};
    return text.error();
  }
  auto r = T::decode(*text);
  if (!r) return Error{file.string() + ": " + r.error().message};
  return std::optional<T>(std::move(*r));
}
}  // namespace record

inline fs::path requestFile(const fs::path& dir) { return dir / "request"; }
inline fs::path stateFile(const fs::path& dir) { return dir / "state"; }
inline fs::path verdictFile(const fs::path& dir) { return dir / "verdict"; }
/// The last finished update, kept after the agent reported it.
inline fs::path lastFile(const fs::path& dir) { return dir / "last"; }

/// Read one of the files above; nullopt when it does not exist, an Error when it is damaged.
Result<std::optional<UpdateState>> readState(const fs::path& file);
Result<std::optional<Verdict>> readVerdict(const fs::path& file);
/// Atomic write, mode 0644: the updater runs as root, and the agent (the directory's owner) must read
/// and replace what it wrote.
Status writeState(const fs::path& file, std::string_view data);

/// What the health check sees after the restart.
struct HealthInputs {
  bool hubConnected = false;
  std::map<std::string, std::string> daemons;      // "vmm" -> DaemonHealth state name now
  std::map<std::string, std::string> baseline;     // before the update
  std::vector<std::string> guestsWanted;           // "vm web", "container cache": the manifest's running guests
  std::map<std::string, std::string> guestsActual; // "vm web" -> "running"; absent when not there
  bool guestsKnown = true;                         // the lists could be read from vmm
  bool sinceUpdate = true;                         // name the baseline as "before the update" in problems
};
/// Everything that is not healthy yet, one phrase each; empty = healthy.
std::vector<std::string> healthProblems(const HealthInputs& in);

/// A tool run to completion, never through a shell (`argv[0]` looked up in the system directories): a
/// minimal environment, the whole process group ended at `timeout`, 256 KiB of output kept; in `cwd` when
/// given. An Error only when it cannot be started.
Result<hooks::detail::SpawnResult> runTool(std::vector<std::string> argv, std::chrono::milliseconds timeout,
                                           const fs::path& cwd = {});

/// The package's control fields (dpkg-deb --field).
struct PackageInfo {
  std::string name, version, arch;
};
Result<PackageInfo> inspectPackage(const fs::path& deb);
/// The installed version of `package` (dpkg-query), empty when not installed.
Result<std::string> installedVersion(const std::string& package);

/// The operator keys the updater trusts, none of them from files the agent can write: commands.operator_keys
/// of `configFile` itself (when it is root's and writable by root alone), and those of the provisioning
/// bundle the node kept (`bundleFile`) when it verifies with `provisioningKey` and names `nodeId`. Each key
/// comes with where it was found, for the log.
Result<std::map<std::string, crypto::VerifyKey>> updaterKeys(const fs::path& configFile, const fs::path& bundleFile,
                                                              const fs::path& provisioningKey, const std::string& nodeId);

/// The updater's check of a request: it carries an INSTALL command signed by one of `trusted`, for
/// `nodeId`, within its validity (with the agent's limits), with the request's command id and digest.
Status authorizeRequest(const UpdateState& request, const std::string& nodeId,
                        const std::map<std::string, crypto::VerifyKey>& trusted, std::int64_t nowMs,
                        std::int64_t clockSkewMs, std::int64_t maxValidityMs);

struct UpdaterOptions {
  UpdateConfig cfg;
  fs::path hooksDir;
  std::chrono::milliseconds hookTimeout{60'000};
  std::string node;
  /// Extra wait for the verdict past the health deadline.
  std::chrono::milliseconds verdictGrace{15'000};
  /// Who may order an install (updaterKeys), and the agent's time limits for signed commands.
  std::map<std::string, crypto::VerifyKey> trusted;
  std::int64_t clockSkewMs = 5 * 60 * 1000;
  std::int64_t maxValidityMs = 24 * 3600 * 1000;
};
/// `outrider-agent update-apply`: carry out DIR/request (or finish a state an earlier run left behind).
/// Exit status 0 when the update committed or there was nothing to do.
int runUpdater(const UpdaterOptions& opts);

}  // namespace outrider::agent::update
