#pragma once
// `outriderctl provision image` and `outriderctl enroll serve` (docs/provisioning.md): their command line,
// the signed bundle they write for the node, and the FAT image made without mounting (mtools).
#include <chrono>
#include <filesystem>
#include <map>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "outrider/common/crypto.hpp"
#include "outrider/common/result.hpp"
#include "outrider/ctl/options.hpp"
#include "outrider/v1/provision.pb.h"

namespace outrider::ctl {

/// The options of `provision ...` and `enroll ...`, taken out of argv before the common parser sees the
/// rest: several of them repeat (--hub, --wg-hub, --operator-key), and for `provision image`, --sign-key
/// means the provisioning key and must be given on the command line (never the operator key from the
/// environment or ctl.toml).
struct ProvisioningArgs {
  bool taken = false;              // the command is `provision` or `enroll`
  std::vector<std::string> rest;   // for parseInvocation
  std::multimap<std::string, std::string> options;  // without the dashes, in command-line order
  std::string error;               // an option without its value
};
ProvisioningArgs takeProvisioningArgs(std::span<const std::string> args);

struct ProvisioningOutcome {
  int exit = 0;
  std::string reason;  // one line, when exit != 0
};
/// Run `provision image` or `enroll serve` (exit statuses as outriderctl's).
ProvisioningOutcome runProvisioning(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out);
/// The two commands themselves (inv.words: "provision" "image" / "enroll" "serve").
ProvisioningOutcome provisionImage(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out);
/// Serves until SIGINT or SIGTERM (or --count requests, or --for seconds); one line per request on `out`.
ProvisioningOutcome enrollServe(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out);

/// The signed envelope (outrider-bundle.bin), as the node's agent reads it: "ORPB", format 1 (u32 LE), the
/// signing key's 8-byte id, the Ed25519 signature over everything else, the serialized bundle.
std::string encodeBundleFile(const outrider::v1::ProvisioningBundle& bundle, const crypto::SigningKey& key);

/// A FAT file system image labelled `label` at `image` holding `files` (name -> content) in its root,
/// made with mformat and mcopy, without mounting. `image` must not exist.
Status writeFatImage(const std::filesystem::path& image, const std::string& label,
                     const std::vector<std::pair<std::string, std::string>>& files);

/// "24h", "90m", "3600s", "7d" or plain seconds; at least one second, at most 365 days.
Result<std::chrono::seconds> parseDuration(std::string_view text, std::string_view what);

}  // namespace outrider::ctl
