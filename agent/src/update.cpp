#include "outrider/agent/update.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <chrono>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "outrider/agent/provision_bundle.hpp"
#include "outrider/agent/verifier.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/config.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/openssl.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/unique_fd.hpp"
#include "outrider/hooks/runner.hpp"
#include "outrider/hooks/spawn.hpp"

namespace outrider::agent::update {

namespace {

std::int64_t nowMs() { return SystemClock().nowMs(); }

std::string digestHex(const crypto::Sha256& d) { return crypto::hex(std::span<const std::uint8_t>(d)); }

std::string mib(std::uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

Result<crypto::Sha256> hashFile(const fs::path& p) {
  UniqueFd f{::open(p.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.get() < 0) return errnoError("open " + p.string(), errno);
  ssl::EvpMdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Error{"sha256: cannot initialise"};
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::read(f.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("read " + p.string(), errno);
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
  }
  crypto::Sha256 out{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), out.data(), &len);
  return out;
}

v1::UpdateResult result(const crypto::Sha256& digest, std::uint64_t size, std::uint64_t have, const char* phase) {
  v1::UpdateResult r;
  r.set_sha256(std::string(reinterpret_cast<const char*>(digest.data()), digest.size()));
  r.set_size(size);
  r.set_have_bytes(have);
  r.set_phase(phase);
  return r;
}


}  // namespace

Result<hooks::detail::SpawnResult> runTool(std::vector<std::string> argv, std::chrono::milliseconds timeout,
                                           const fs::path& cwd) {
  auto prog = hooks::detail::findProgram(argv.front());
  if (!prog) return Error{argv.front() + ": " + prog.error().message};
  hooks::detail::SpawnOptions o;
  o.program = *prog;
  o.args.assign(argv.begin() + 1, argv.end());
  o.env = {std::string("PATH=") + hooks::detail::kMinimalPath, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"};
  o.timeout = timeout;
  o.outputCap = 256 * 1024;
  if (!cwd.empty()) {
    // posix_spawn has no portable chdir: go through sh with the directory as an argument.
    o.program = "/bin/sh";
    std::vector<std::string> a{"-c", "cd \"$0\" && exec \"$@\"", cwd.string(), prog->string()};
    a.insert(a.end(), argv.begin() + 1, argv.end());
    o.args = std::move(a);
  }
  return hooks::detail::spawnAndWait(o);
}

namespace {

std::string lastLines(const std::string& text, std::size_t n = 3) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  std::string out;
  for (std::size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i)
    out += (out.empty() ? "" : " | ") + lines[i];
  return out.size() > 400 ? out.substr(out.size() - 400) : out;
}

}  // namespace

std::uint64_t spaceNeeded(std::uint64_t size, std::uint64_t have, std::uint64_t reserve) {
  return (size - std::min(size, have)) + 5 * size + reserve;
}

Result<std::uint64_t> freeSpace(const fs::path& dir) {
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0) return errnoError("statvfs " + dir.string(), errno);
  return static_cast<std::uint64_t>(s.f_bavail) * s.f_frsize;
}

// ---------------------------------------------------------------- the package in transfer

PackageStore::PackageStore(fs::path dir, std::uint64_t reserveBytes, std::uint64_t maxBytes, FreeSpaceFn free)
    : dir_(std::move(dir)), reserve_(reserveBytes), max_(maxBytes), free_(std::move(free)) {}

std::optional<PackageStore::Part> PackageStore::findPart(const crypto::Sha256& digest) const {
  const std::string prefix = digestHex(digest) + "-";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    auto n = e.path().filename().string();
    if (n.rfind(prefix, 0) != 0 || !n.ends_with(".part")) continue;
    auto sizeText = n.substr(prefix.size(), n.size() - prefix.size() - 5);
    Part p;
    p.path = e.path();
    try {
      p.size = std::stoull(sizeText);
    } catch (const std::exception&) {
      continue;
    }
    p.have = fs::file_size(e.path(), ec);
    if (ec) continue;
    return p;
  }
  return std::nullopt;
}

Result<v1::UpdateResult> PackageStore::offer(const crypto::Sha256& digest, std::uint64_t size) {
  if (size == 0) return Error{"the package is empty"};
  if (size > max_) return Error{fmt::format("the package ({}) is larger than the node's limit of {}", mib(size), mib(max_))};
  if (auto s = makeDirs(dir_, 0700); !s) return s.error();
  auto deb = dir_ / (digestHex(digest) + ".deb");
  std::error_code ec;
  if (fs::exists(deb, ec) && fs::file_size(deb, ec) == size) return result(digest, size, size, "received");
  auto part = findPart(digest);
  std::uint64_t have = part && part->size == size ? std::min(part->have, size) : 0;
  auto avail = free_(dir_);
  if (!avail) return avail.error();
  auto need = spaceNeeded(size, have, reserve_);
  if (*avail < need)
    return Error{fmt::format("not enough disk space in {}: the update of a {} package needs {} free, {} is free",
                             dir_.string(), mib(size), mib(need), mib(*avail)),
                 ENOSPC};
  if (!part || part->size != size) {
    prune(std::nullopt);
    auto p = dir_ / fmt::format("{}-{}.part", digestHex(digest), size);
    UniqueFd f{::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600)};
    if (f.get() < 0) return errnoError("create " + p.string(), errno);
  } else {
    // Only this transfer: drop other packages' files.
    std::error_code ec2;
    for (const auto& e : fs::directory_iterator(dir_, ec2)) {
      auto n = e.path().filename().string();
      if ((n.ends_with(".part") || n.ends_with(".deb")) && e.path() != part->path) fs::remove(e.path(), ec2);
    }
  }
  return result(digest, size, have, "receiving");
}

Result<v1::UpdateResult> PackageStore::chunk(const crypto::Sha256& digest, std::uint64_t offset, std::string_view data) {
  auto deb = dir_ / (digestHex(digest) + ".deb");
  std::error_code ec;
  if (fs::exists(deb, ec)) {
    auto size = fs::file_size(deb, ec);
    return result(digest, size, size, "received");
  }
  auto part = findPart(digest);
  if (!part) return Error{"no transfer of this package is in progress; offer it first"};
  if (offset != part->have)
    return Error{fmt::format("chunk at byte {} but the node holds {} bytes of the package", offset, part->have)};
  if (data.empty() || offset + data.size() > part->size)
    return Error{fmt::format("chunk of {} bytes at {} does not fit the {}-byte package", data.size(), offset, part->size)};
  {
    UniqueFd f{::open(part->path.c_str(), O_WRONLY | O_CLOEXEC)};
    if (f.get() < 0) return errnoError("open " + part->path.string(), errno);
    std::size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(f.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        // A short write leaves garbage past `have`: cut back so that the offsets stay right.
        if (::ftruncate(f.get(), static_cast<off_t>(offset)) != 0) LOG_WARN("update: cannot cut {} back", part->path.string());
        return errnoError("write " + part->path.string(), err);
      }
      done += static_cast<std::size_t>(n);
    }
    if (offset + data.size() < part->size) return result(digest, part->size, offset + data.size(), "receiving");
    if (::fsync(f.get()) != 0) return errnoError("fsync " + part->path.string(), errno);
  }
  auto got = hashFile(part->path);
  if (!got) return got.error();
  if (*got != digest) {
    fs::remove(part->path, ec);
    return Error{fmt::format("the received package hashes to {}, not {}; it was dropped and the transfer starts over",
                             digestHex(*got), digestHex(digest))};
  }
  fs::rename(part->path, deb, ec);
  if (ec) return Error{"rename " + part->path.string() + ": " + ec.message()};
  (void)fsyncDir(dir_);
  return result(digest, part->size, part->size, "received");
}

Result<fs::path> PackageStore::package(const crypto::Sha256& digest) const {
  auto deb = dir_ / (digestHex(digest) + ".deb");
  std::error_code ec;
  if (!fs::exists(deb, ec)) {
    auto part = findPart(digest);
    if (part) return Error{fmt::format("the package is incomplete: {} of {} bytes received", part->have, part->size)};
    return Error{"the node has no package with this digest; send it first"};
  }
  return deb;
}

void PackageStore::prune(const std::optional<crypto::Sha256>& keep) {
  std::error_code ec;
  std::string keepName = keep ? digestHex(*keep) + ".deb" : std::string();
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    auto n = e.path().filename().string();
    if ((n.ends_with(".part") || n.ends_with(".deb")) && n != keepName) fs::remove(e.path(), ec);
  }
}

// ---------------------------------------------------------------- state files

namespace record {

// key=value lines; newlines and backslashes in values escaped.
std::string escape(std::string_view v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}
namespace {
std::string unescape(std::string_view v) {
  std::string o;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) {
      ++i;
      o += v[i] == 'n' ? '\n' : v[i];
    } else {
      o += v[i];
    }
  }
  return o;
}
}  // namespace

Result<std::map<std::string, std::string>> parseLines(std::string_view text) {
  std::map<std::string, std::string> kv;
  std::size_t line = 0;
  while (!text.empty()) {
    ++line;
    auto nl = text.find('\n');
    auto l = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (l.empty()) continue;
    auto eq = l.find('=');
    if (eq == std::string_view::npos || eq == 0) return Error{fmt::format("line {}: expected key=value", line)};
    kv[std::string(l.substr(0, eq))] = unescape(l.substr(eq + 1));
  }
  if (kv["format"] != "1") return Error{"unknown format (expected format=1)"};
  return kv;
}
Result<std::int64_t> toInt(const std::map<std::string, std::string>& kv, const char* key) {
  auto it = kv.find(key);
  if (it == kv.end() || it->second.empty()) return std::int64_t{0};
  try {
    std::size_t pos = 0;
    auto v = std::stoll(it->second, &pos);
    if (pos != it->second.size()) throw std::invalid_argument("trailing");
    return static_cast<std::int64_t>(v);
  } catch (const std::exception&) {
    return Error{fmt::format("{}: not a number: {}", key, it->second)};
  }
}
std::string get(const std::map<std::string, std::string>& kv, const char* key) {
  auto it = kv.find(key);
  return it == kv.end() ? std::string() : it->second;
}

}  // namespace record

using record::escape;
using record::get;
using record::parseLines;
using record::toInt;

std::string_view phaseName(Phase p) {
  switch (p) {
    case Phase::requested: return "requested";
    case Phase::installing: return "installing";
    case Phase::awaitingHealth: return "awaiting-health";
    case Phase::committed: return "committed";
    case Phase::rollingBack: return "rolling-back";
    case Phase::rolledBack: return "rolled-back";
    case Phase::failed: return "failed";
  }
  return "?";
}

std::optional<Phase> parsePhase(std::string_view s) {
  for (auto p : {Phase::requested, Phase::installing, Phase::awaitingHealth, Phase::committed, Phase::rollingBack,
                 Phase::rolledBack, Phase::failed})
    if (phaseName(p) == s) return p;
  return std::nullopt;
}

std::string UpdateState::encode() const {
  std::string o = "format=1\n";
  auto add = [&](const char* k, const std::string& v) { o += std::string(k) + "=" + escape(v) + "\n"; };
  add("command", commandId);
  add("sha256", sha256);
  add("package", packagePath.string());
  add("from", fromVersion);
  add("to", toVersion);
  add("phase", std::string(phaseName(phase)));
  add("reason", reason);
  add("post_update", postUpdate);
  add("requested_at_ms", std::to_string(requestedAtMs));
  add("restarted_at_ms", std::to_string(restartedAtMs));
  add("deadline_at_ms", std::to_string(deadlineAtMs));
  add("health_deadline_s", std::to_string(healthDeadlineS));
  for (const auto& [d, h] : baseline) add(("baseline." + d).c_str(), h);
  if (!signedCommand.empty()) add("signed_command", crypto::base64(signedCommand));
  return o;
}

Result<UpdateState> UpdateState::decode(std::string_view text) {
  auto kv = parseLines(text);
  if (!kv) return kv.error();
  UpdateState s;
  s.commandId = get(*kv, "command");
  s.sha256 = get(*kv, "sha256");
  s.packagePath = get(*kv, "package");
  s.fromVersion = get(*kv, "from");
  s.toVersion = get(*kv, "to");
  auto phase = parsePhase(get(*kv, "phase"));
  if (!phase) return Error{"unknown phase '" + get(*kv, "phase") + "'"};
  s.phase = *phase;
  s.reason = get(*kv, "reason");
  s.postUpdate = get(*kv, "post_update");
  auto a = toInt(*kv, "requested_at_ms"), b = toInt(*kv, "restarted_at_ms"), c = toInt(*kv, "deadline_at_ms"),
       d = toInt(*kv, "health_deadline_s");
  for (auto* r : {&a, &b, &c, &d})
    if (!*r) return r->error();
  s.requestedAtMs = *a;
  s.restartedAtMs = *b;
  s.deadlineAtMs = *c;
  s.healthDeadlineS = static_cast<std::uint32_t>(std::clamp<std::int64_t>(*d, 0, 86400));
  for (const auto& [k, v] : *kv)
    if (k.rfind("baseline.", 0) == 0) s.baseline[k.substr(9)] = v;
  if (auto sc = get(*kv, "signed_command"); !sc.empty()) {
    auto raw = crypto::unbase64(sc);
    if (!raw) return Error{"signed_command: not base64"};
    s.signedCommand.assign(raw->begin(), raw->end());
  }
  if (s.commandId.empty() || s.sha256.size() != 64) return Error{"command or sha256 missing"};
  return s;
}

std::string Verdict::encode() const {
  return fmt::format("format=1\ncommand={}\nhealthy={}\nreason={}\nhealth_ms={}\n", escape(commandId),
                     healthy ? 1 : 0, escape(reason), healthMs);
}

Result<Verdict> Verdict::decode(std::string_view text) {
  auto kv = parseLines(text);
  if (!kv) return kv.error();
  Verdict v;
  v.commandId = get(*kv, "command");
  v.healthy = get(*kv, "healthy") == "1";
  v.reason = get(*kv, "reason");
  auto ms = toInt(*kv, "health_ms");
  if (!ms) return ms.error();
  v.healthMs = static_cast<std::uint32_t>(std::clamp<std::int64_t>(*ms, 0, UINT32_MAX));
  if (v.commandId.empty()) return Error{"command missing"};
  return v;
}

Result<std::optional<UpdateState>> readState(const fs::path& file) { return record::read<UpdateState>(file); }
Result<std::optional<Verdict>> readVerdict(const fs::path& file) { return record::read<Verdict>(file); }
Status writeState(const fs::path& file, std::string_view data) { return writeFileAtomic(file, data, 0644); }

// ---------------------------------------------------------------- health

std::vector<std::string> healthProblems(const HealthInputs& in) {
  std::vector<std::string> out;
  if (!in.hubConnected) out.push_back("hub not reachable");
  for (const auto& [name, before] : in.baseline) {
    auto it = in.daemons.find(name);
    std::string now = it == in.daemons.end() ? "UNREACHABLE" : it->second;
    if (now == "HEALTHY") continue;
    if (before != "HEALTHY" && now == "DEGRADED") continue;  // no worse than before the update
    out.push_back(in.sinceUpdate ? fmt::format("{} {} (was {} before the update)", name, now, before)
                                 : fmt::format("{} {}", name, now));
  }
  if (!in.guestsKnown && !in.guestsWanted.empty()) {
    out.push_back("guests: vmm cannot list them");
  } else {
    for (const auto& g : in.guestsWanted) {
      auto it = in.guestsActual.find(g);
      if (it == in.guestsActual.end()) out.push_back(g + " missing");
      else if (it->second != "running") out.push_back(g + " " + it->second);
    }
  }
  return out;
}

// ---------------------------------------------------------------- who may order an install

namespace {

// Owned by root and writable by root alone: what the unprivileged agent cannot have changed.
bool rootsAlone(const fs::path& p, std::string& why) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) {
    why = p.string() + ": " + std::strerror(errno);
    return false;
  }
  if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    why = fmt::format("{} is not root's alone (owner uid {}, mode {:o})", p.string(), st.st_uid, st.st_mode & 07777);
    return false;
  }
  return true;
}

}  // namespace

Result<std::map<std::string, crypto::VerifyKey>> updaterKeys(const fs::path& configFile, const fs::path& bundleFile,
                                                              const fs::path& provisioningKey, const std::string& nodeId) {
  std::map<std::string, crypto::VerifyKey> out;
  std::string why;
  if (rootsAlone(configFile, why)) {
    try {
      auto keys = parseOperatorKeys(ConfigReader::load(configFile).strList("commands.operator_keys", {}));
      if (!keys) return Error{configFile.string() + ": " + keys.error().message};
      out = std::move(*keys);
    } catch (const ConfigError& e) {
      return Error{e.what()};
    }
  } else {
    LOG_WARN("update: {}; its operator keys do not count for the updater", why);
  }
  auto bundle = readFile(bundleFile, provision::kMaxBundleBytes + 1);
  if (!bundle) {
    if (bundle.error().code != ENOENT) LOG_WARN("update: {}", bundle.error().message);
    return out;
  }
  if (!rootsAlone(provisioningKey, why)) {
    LOG_WARN("update: {}; the provisioning bundle's operator keys do not count", why);
    return out;
  }
  auto prov = crypto::VerifyKey::parse(provisioningKey.string());
  if (!prov) {
    LOG_WARN("update: provisioning key {}: {}", provisioningKey.string(), prov.error().message);
    return out;
  }
  auto vb = provision::verifyBundle(*bundle, *prov);
  if (!vb) {
    LOG_WARN("update: {}: {}; its operator keys do not count", bundleFile.string(), vb.error().message);
    return out;
  }
  if (vb->bundle.node_id() != nodeId) {
    LOG_WARN("update: {} is for node '{}', not '{}'; its operator keys do not count", bundleFile.string(),
             vb->bundle.node_id(), nodeId);
    return out;
  }
  // verifyBundle has checked every key already.
  auto keys = parseOperatorKeys({vb->bundle.operator_keys().begin(), vb->bundle.operator_keys().end()});
  if (keys) out.merge(*keys);
  return out;
}

Status authorizeRequest(const UpdateState& request, const std::string& nodeId,
                        const std::map<std::string, crypto::VerifyKey>& trusted, std::int64_t nowMs,
                        std::int64_t clockSkewMs, std::int64_t maxValidityMs) {
  if (request.signedCommand.empty()) return Error{"the request carries no operator-signed install command"};
  if (trusted.empty()) return Error{"the updater trusts no operator key (none in the root-owned configuration or a "
                                    "verified provisioning bundle)"};
  struct At final : Clock {
    std::int64_t ms;
    std::int64_t nowMs() const override { return ms; }
  } at;
  at.ms = nowMs;
  CommandVerifier verifier(nodeId, trusted,
                           VerifierLimits{.clockSkewMs = clockSkewMs, .maxValidityMs = maxValidityMs}, at);
  auto v = verifier.verify(request.signedCommand);
  if (v.accepted()) v = verifier.checkTime(std::move(v));
  if (!v.accepted()) return Error{"the install command does not check: " + v.message};
  if (v.commandId != request.commandId)
    return Error{fmt::format("the signed command is {}, the request names {}", v.commandId, request.commandId)};
  if (!v.body.has_update() || v.body.update().op() != v1::UpdateCommand::INSTALL)
    return Error{"the signed command is not an update install"};
  const auto& sha = v.body.update().sha256();
  if (crypto::hex(std::string_view(sha)) != request.sha256)
    return Error{"the signed command installs another package than the request names"};
  return {};
}

// ---------------------------------------------------------------- package tools

Result<PackageInfo> inspectPackage(const fs::path& deb) {
  auto r = runTool({"dpkg-deb", "--field", deb.string(), "Package", "Version", "Architecture"}, std::chrono::seconds(30));
  if (!r) return r.error();
  if (r->exitCode != 0)
    return Error{"not a Debian package: dpkg-deb: " + hooks::detail::firstLine(r->output)};
  PackageInfo info;
  std::istringstream in(r->output);
  for (std::string line; std::getline(in, line);) {
    auto colon = line.find(": ");
    if (colon == std::string::npos) continue;
    auto k = line.substr(0, colon), v = line.substr(colon + 2);
    if (k == "Package") info.name = v;
    else if (k == "Version") info.version = v;
    else if (k == "Architecture") info.arch = v;
  }
  if (info.name.empty() || info.version.empty()) return Error{"the package has no Package or Version field"};
  return info;
}

Result<std::string> installedVersion(const std::string& package) {
  auto r = runTool({"dpkg-query", "--showformat=${db:Status-Abbrev}${Version}", "--show", package},
                   std::chrono::seconds(30));
  if (!r) return r.error();
  if (r->exitCode != 0 || r->output.rfind("ii ", 0) != 0) return std::string();
  auto v = r->output.substr(3);
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  return v;
}

// ---------------------------------------------------------------- the updater (root)

namespace {

class Updater {
 public:
  explicit Updater(const UpdaterOptions& o) : o_(o), dir_(o.cfg.dir) {}

  int run() {
    if (auto s = makeDirs(dir_, 0700); !s) {
      LOG_ERR("update: {}", s.error().message);
      return 1;
    }
    UniqueFd lock{::open((dir_ / "updater.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)};
    if (lock.get() < 0 || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      LOG_WARN("update: another updater is running; leaving it to that one");
      return 0;
    }
    // Who holds the lock: for operators (and tests) that must find a running updater.
    auto pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock.get(), 0) != 0 || ::pwrite(lock.get(), pid.data(), pid.size(), 0) < 0)
      LOG_WARN("update: cannot write the PID into updater.lock");
    auto state = readState(stateFile(dir_));
    if (!state) {
      LOG_ERR("update: {}; moving it aside", state.error().message);
      std::error_code ec;
      fs::rename(stateFile(dir_), dir_ / "state.damaged", ec);
      state = std::optional<UpdateState>{};
    }
    if (*state && !finalPhase((*state)->phase)) {
      s_ = **state;
      LOG_NOTICE("update {}: resuming in phase {}", s_.commandId, phaseName(s_.phase));
      return resume();
    }
    auto req = readState(requestFile(dir_));
    std::error_code ec;
    if (!req || !*req) {
      if (!req) LOG_ERR("update: request refused: {}", req.error().message);
      fs::remove(requestFile(dir_), ec);
      LOG_INFO("update: nothing to do");
      return req ? 0 : 1;
    }
    s_ = **req;
    fs::remove(requestFile(dir_), ec);
    // The request comes from the unprivileged agent: only an install the operator signed is carried out,
    // and only the package the signature names, from a copy the agent cannot touch.
    if (auto a = authorizeRequest(s_, o_.node, o_.trusted, nowMs(), o_.clockSkewMs, o_.maxValidityMs); !a) {
      LOG_ERR("update {}: refused: {}", s_.commandId, a.error().message);
      return fail("the updater refused the request: " + a.error().message + "; nothing was installed");
    }
    s_.signedCommand.clear();
    s_.packagePath = dir_ / (s_.sha256 + ".deb");
    s_.phase = Phase::installing;
    if (!save()) return 1;
    (void)fsyncDir(dir_);
    return install();
  }

 private:
  bool save() {
    if (auto s = writeState(stateFile(dir_), s_.encode()); !s) {
      LOG_ERR("update {}: cannot write the state: {}", s_.commandId, s.error().message);
      return false;
    }
    LOG_INFO("update {}: {}{}", s_.commandId, phaseName(s_.phase), s_.reason.empty() ? "" : ": " + s_.reason);
    return true;
  }

  int fail(std::string reason) {
    std::error_code ec;
    fs::remove(installCopy(), ec);
    s_.phase = Phase::failed;
    s_.reason = std::move(reason);
    save();
    return 1;
  }

  fs::path rootDir() const { return o_.cfg.rootDir; }
  fs::path rollbackDir() const { return rootDir() / "rollback"; }
  fs::path installCopy() const { return rootDir() / "install.deb"; }

  // The package as the updater installs it: copied out of the agent's directory into its own first, so
  // that what was checked is what dpkg gets.
  Status copyPackage() {
    if (auto s = makeDirs(rootDir(), 0700); !s) return s;
    ::chmod(rootDir().c_str(), 0700);
    std::error_code ec;
    fs::remove(installCopy(), ec);
    fs::copy_file(s_.packagePath, installCopy(), ec);
    if (ec) return Error{"copy " + s_.packagePath.string() + ": " + ec.message()};
    ::chmod(installCopy().c_str(), 0600);
    return {};
  }

  Result<fs::path> rollbackPackage() const {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(rollbackDir(), ec))
      if (e.path().extension() == ".deb") return e.path();
    return Error{"no rollback package in " + rollbackDir().string()};
  }

  Status dpkgInstall(const fs::path& deb) {
    auto r = runTool({"dpkg", "--install", "--force-confold", "--force-confdef", deb.string()}, std::chrono::minutes(10));
    if (!r) return r.error();
    if (r->exitCode != 0 || r->timedOut)
      return Error{"dpkg: " + hooks::detail::describe(*r, std::chrono::minutes(10)) + ": " + lastLines(r->output)};
    return {};
  }

  void restart() {
    if (o_.cfg.restartCommand.empty()) return;  // the maintainer scripts restarted the units
    auto r = runTool(o_.cfg.restartCommand, std::chrono::minutes(2));
    if (!r) LOG_ERR("update {}: restart: {}", s_.commandId, r.error().message);
    else if (r->exitCode != 0)
      LOG_ERR("update {}: restart: {}: {}", s_.commandId, hooks::detail::describe(*r, std::chrono::minutes(2)),
              lastLines(r->output));
  }

  int install() {
    if (auto c = copyPackage(); !c) return fail("the package cannot be read: " + c.error().message);
    auto digest = hashFile(installCopy());
    if (!digest) return fail("the package cannot be read: " + digest.error().message);
    if (digestHex(*digest) != s_.sha256) return fail("the package's digest is not the one the operator signed");
    auto info = inspectPackage(installCopy());
    if (!info) return fail(info.error().message);
    if (info->name != o_.cfg.package)
      return fail(fmt::format("the package is '{}', not '{}'", info->name, o_.cfg.package));
    // The versions as dpkg tells the updater, not as the request says.
    auto from = installedVersion(o_.cfg.package);
    if (!from) return fail("cannot read the installed version: " + from.error().message);
    if (from->empty()) return fail(o_.cfg.package + " is not installed as a package");
    if (*from == info->version) return fail(fmt::format("{} {} is already installed", o_.cfg.package, *from));
    s_.fromVersion = *from;
    s_.toVersion = info->version;

    // The rollback package: the installed version, rebuilt from the files dpkg knows.
    std::error_code ec;
    fs::remove_all(rollbackDir(), ec);
    if (auto s = makeDirs(rollbackDir(), 0700); !s) return fail(s.error().message);
    auto repack = runTool({"dpkg-repack", o_.cfg.package}, std::chrono::minutes(5), rollbackDir());
    if (!repack) return fail("cannot make the rollback package: " + repack.error().message);
    if (repack->exitCode != 0)
      return fail("cannot make the rollback package: dpkg-repack: " + lastLines(repack->output));
    if (auto rb = rollbackPackage(); !rb) return fail("cannot make the rollback package: " + rb.error().message);

    auto s = dpkgInstall(installCopy());
    fs::remove(installCopy(), ec);
    if (!s) return rollBack("installing " + s_.toVersion + " failed: " + s.error().message);
    auto now = installedVersion(o_.cfg.package);
    if (!now || *now != s_.toVersion)
      return rollBack(fmt::format("after installing, dpkg reports version '{}', not {}", now ? *now : "?", s_.toVersion));

    if (!o_.hooksDir.empty()) {
      hooks::HookRunner runner({.hooksDir = o_.hooksDir, .node = o_.node, .timeout = o_.hookTimeout});
      auto r = runner.run("post-update", {{"OUTRIDER_VERSION_FROM", s_.fromVersion},
                                          {"OUTRIDER_VERSION_TO", s_.toVersion},
                                          {"OUTRIDER_COMMAND_ID", s_.commandId}});
      s_.postUpdate = r ? r->summary() : "post-update hooks: " + r.error().message;
    }
    return awaitHealth();
  }

  int awaitHealth() {
    std::error_code ec;
    fs::remove(verdictFile(dir_), ec);
    s_.phase = Phase::awaitingHealth;
    s_.restartedAtMs = nowMs();
    s_.deadlineAtMs = s_.restartedAtMs + static_cast<std::int64_t>(s_.healthDeadlineS) * 1000;
    if (!save()) return rollBack("cannot write the update state");
    restart();
    return waitVerdict();
  }

  int waitVerdict() {
    const auto giveUp = s_.deadlineAtMs + o_.verdictGrace.count();
    while (nowMs() < giveUp) {
      auto v = readVerdict(verdictFile(dir_));
      if (v && *v && (*v)->commandId == s_.commandId) {
        if ((*v)->healthy) {
          s_.phase = Phase::committed;
          s_.reason.clear();
          save();
          return 0;
        }
        return rollBack("health check failed: " + (*v)->reason);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return rollBack(fmt::format("no health verdict from the agent within {} s of the restart", s_.healthDeadlineS));
  }

  int rollBack(std::string reason) {
    s_.phase = Phase::rollingBack;
    s_.reason = std::move(reason);
    save();
    auto rb = rollbackPackage();
    if (!rb) return fail(s_.reason + "; and no rollback package: " + rb.error().message);
    auto s = dpkgInstall(*rb);
    restart();
    if (!s) return fail(s_.reason + "; and the rollback failed: " + s.error().message);
    s_.phase = Phase::rolledBack;
    save();
    return 1;
  }

  int resume() {
    switch (s_.phase) {
      case Phase::requested:
      case Phase::installing:
        // Cut off while installing (power loss, kill): the files on disk are in an unknown state.
        return rollBack("the update was interrupted while installing");
      case Phase::awaitingHealth:
        return waitVerdict();
      case Phase::rollingBack:
        return rollBack(s_.reason.empty() ? "the rollback was interrupted" : s_.reason);
      default:
        return 0;
    }
  }

  const UpdaterOptions& o_;
  fs::path dir_;
  UpdateState s_;
};

}  // namespace

int runUpdater(const UpdaterOptions& opts) { return Updater(opts).run(); }

}  // namespace outrider::agent::update
