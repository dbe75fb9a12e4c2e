// The token store and the enrollment record: small TOML files, replaced atomically under a lock file.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <sstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/ctl/enroll.hpp"

namespace outrider::ctl {

namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kDayMs = 86'400'000;

Result<toml::table> parseToml(const fs::path& file) {
  auto text = readFile(file, 64u << 20);
  if (!text) return text.error();
  try {
    return toml::parse(*text, file.string());
  } catch (const toml::parse_error& e) {
    return Error{fmt::format("{}:{}: {}", file.string(), e.source().begin.line, e.description())};
  }
}

// Each [[section]] entry through `fn`; a wrong type names the file and the entry.
template <class Fn>
Status eachTable(const toml::table& root, std::string_view section, const fs::path& file, Fn&& fn) {
  const toml::node* n = root.get(section);
  if (!n) return {};
  const toml::array* arr = n->as_array();
  if (!arr) return Error{fmt::format("{}: '{}' is not an array of tables", file.string(), section)};
  std::size_t i = 0;
  for (const auto& el : *arr) {
    ++i;
    const toml::table* t = el.as_table();
    if (!t) return Error{fmt::format("{}: {} entry {} is not a table", file.string(), section, i)};
    if (auto s = fn(*t); !s) return Error{fmt::format("{}: {} entry {}: {}", file.string(), section, i, s.error().message)};
  }
  return {};
}

struct Fields {
  const toml::table& t;
  std::string missing;
  std::string str(std::string_view k) {
    auto v = t[k].value<std::string>();
    if (!v && missing.empty()) missing = std::string(k);
    return v.value_or("");
  }
  std::string optStr(std::string_view k) { return t[k].value<std::string>().value_or(""); }
  std::int64_t integer(std::string_view k) {
    auto v = t[k].value<std::int64_t>();
    if (!v && missing.empty()) missing = std::string(k);
    return v.value_or(0);
  }
  Status done() const {
    if (missing.empty()) return {};
    return Error{"key '" + missing + "' missing or of the wrong type"};
  }
};

std::string render(const toml::table& t, std::string_view header) {
  std::ostringstream os;
  os << header << t << '\n';
  return os.str();
}

}  // namespace

Result<FileLock> FileLock::acquire(const fs::path& path) {
  fs::path lock = path;
  lock += ".lock";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return errnoError("open " + lock.string(), errno);
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    ::close(fd);
    return errnoError("lock " + lock.string(), err);
  }
  return FileLock(fd);
}

FileLock::FileLock(FileLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

Result<std::vector<TokenRecord>> TokenStore::read(const fs::path& file) {
  std::vector<TokenRecord> out;
  std::error_code ec;
  if (!fs::exists(file, ec)) return out;
  auto root = parseToml(file);
  if (!root) return root.error();
  auto st = eachTable(*root, "token", file, [&](const toml::table& t) -> Status {
    Fields f{t, {}};
    TokenRecord r;
    r.id = f.str("id");
    std::string secretHex = f.str("secret");
    r.node = f.str("node");
    r.bundleId = f.optStr("bundle");
    r.createdAtMs = f.integer("created_at_ms");
    r.expiresAtMs = f.integer("expires_at_ms");
    if (auto s = f.done(); !s) return s;
    if (secretHex.size() != 64) return Error{"secret is not 64 hex digits"};
    for (std::size_t i = 0; i < secretHex.size(); i += 2) {
      auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
      };
      int hi = nib(secretHex[i]), lo = nib(secretHex[i + 1]);
      if (hi < 0 || lo < 0) return Error{"secret is not lowercase hex"};
      r.secret.push_back(static_cast<char>(hi * 16 + lo));
    }
    if (tokenIdOf(r.secret) != r.id) return Error{"id does not match the secret"};
    out.push_back(std::move(r));
    return {};
  });
  if (!st) return st.error();
  return out;
}

Status TokenStore::add(const fs::path& file, const TokenRecord& token, std::int64_t nowMs) {
  auto lock = FileLock::acquire(file);
  if (!lock) return lock.error();
  auto tokens = TokenStore::read(file);
  if (!tokens) return tokens.error();
  toml::array arr;
  auto push = [&](const TokenRecord& r) {
    arr.push_back(toml::table{{"id", r.id},
                              {"secret", crypto::hex(r.secret)},
                              {"node", r.node},
                              {"bundle", r.bundleId},
                              {"created_at_ms", r.createdAtMs},
                              {"expires_at_ms", r.expiresAtMs}});
  };
  for (const auto& r : *tokens)
    if (r.expiresAtMs + kDayMs > nowMs && r.id != token.id) push(r);
  push(token);
  toml::table root{{"token", arr}};
  return writeFileAtomic(file,
                         render(root, "# Outrider enrollment tokens (secret): written by `outriderctl provision image`,\n"
                                      "# read by `outriderctl enroll serve`. Keep mode 0600.\n"),
                         0600);
}

Result<EnrollDb> EnrollDb::read(const fs::path& file) {
  EnrollDb db;
  std::error_code ec;
  if (!fs::exists(file, ec)) return db;
  auto root = parseToml(file);
  if (!root) return root.error();
  auto st = eachTable(*root, "node", file, [&](const toml::table& t) -> Status {
    Fields f{t, {}};
    EnrolledNode n;
    n.node = f.str("id");
    n.enrolledAtMs = f.integer("enrolled_at_ms");
    n.tokenId = f.str("token");
    n.bundleId = f.optStr("bundle");
    n.serial = f.str("serial");
    n.certificateSha256 = f.str("certificate_sha256");
    n.publicKeySha256 = f.str("public_key_sha256");
    n.wireguardPublicKey = f.optStr("wireguard_public_key");
    n.certificatePem = f.str("certificate");
    if (auto s = f.done(); !s) return s;
    db.nodes.push_back(std::move(n));
    return {};
  });
  if (!st) return st.error();
  st = eachTable(*root, "spent", file, [&](const toml::table& t) -> Status {
    Fields f{t, {}};
    SpentToken s;
    s.id = f.str("token");
    s.node = f.str("node");
    s.publicKeySha256 = f.str("public_key_sha256");
    s.usedAtMs = f.integer("used_at_ms");
    s.expiresAtMs = f.integer("expires_at_ms");
    if (auto d = f.done(); !d) return d;
    db.spent.push_back(std::move(s));
    return {};
  });
  if (!st) return st.error();
  return db;
}

Status EnrollDb::write(const fs::path& file) const {
  toml::array nodesArr, spentArr;
  for (const auto& n : nodes)
    nodesArr.push_back(toml::table{{"id", n.node},
                                   {"enrolled_at_ms", n.enrolledAtMs},
                                   {"token", n.tokenId},
                                   {"bundle", n.bundleId},
                                   {"serial", n.serial},
                                   {"certificate_sha256", n.certificateSha256},
                                   {"public_key_sha256", n.publicKeySha256},
                                   {"wireguard_public_key", n.wireguardPublicKey},
                                   {"certificate", n.certificatePem}});
  for (const auto& s : spent)
    spentArr.push_back(toml::table{{"token", s.id},
                                   {"node", s.node},
                                   {"public_key_sha256", s.publicKeySha256},
                                   {"used_at_ms", s.usedAtMs},
                                   {"expires_at_ms", s.expiresAtMs}});
  toml::table root{{"node", nodesArr}, {"spent", spentArr}};
  return writeFileAtomic(file, render(root, "# Outrider enrolled nodes and spent tokens: written by `outriderctl enroll serve`.\n"),
                         0600);
}

}  // namespace outrider::ctl
