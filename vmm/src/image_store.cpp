#include "outrider/vmm/image_store.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <algorithm>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/c_handle.hpp"
#include "outrider/common/names.hpp"
#include "outrider/vmm/crun_runtime.hpp"
#include "outrider/vmm/ct_json.hpp"

namespace outrider::vmm {

namespace fs = std::filesystem;

std::string normaliseTarPath(std::string_view p) {
  std::vector<std::string_view> parts;
  bool abs = !p.empty() && p.front() == '/';
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    auto c = p.substr(i, j - i);
    if (!c.empty() && c != ".") parts.push_back(c);
    i = j + 1;
  }
  std::string out = abs ? "/" : "";
  for (std::size_t k = 0; k < parts.size(); ++k) {
    if (k) out += '/';
    out += parts[k];
  }
  return out;
}

namespace {

bool hasDotDot(std::string_view p) {
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    if (p.substr(i, j - i) == "..") return true;
    i = j + 1;
  }
  return false;
}

/// Depth check of a relative symlink target seen from the link's directory: false if it climbs above
/// the root.
bool staysInside(const std::string& linkPath, const std::string& target) {
  int depth = 0;
  auto dir = linkPath.rfind('/');
  std::string base = dir == std::string::npos ? "" : linkPath.substr(0, dir);
  std::string combined = base.empty() ? target : base + "/" + target;
  std::size_t i = 0;
  while (i <= combined.size()) {
    std::size_t j = combined.find('/', i);
    if (j == std::string::npos) j = combined.size();
    auto c = combined.substr(i, j - i);
    if (c == "..") {
      if (--depth < 0) return false;
    } else if (!c.empty() && c != ".") {
      ++depth;
    }
    i = j + 1;
  }
  return true;
}

}  // namespace

Status TarChecker::check(const TarEntry& e) {
  auto bad = [&](std::string why) { return Error{fmt::format("tar entry '{}': {}", e.path, why)}; };
  if (!e.path.empty() && e.path.front() == '/') return bad("absolute path escapes the image root");
  if (hasDotDot(e.path)) return bad("'..' escapes the image root");
  // Any proper prefix that an earlier entry made a symlink would make tar write outside the root.
  for (std::size_t i = e.path.find('/'); i != std::string::npos; i = e.path.find('/', i + 1))
    if (symlinks_.count(e.path.substr(0, i)))
      return bad(fmt::format("goes through the symlink '{}'", e.path.substr(0, i)));
  switch (e.type) {
    case '0': case '\0': case '7': case '5': case '6': case 'S':
      symlinks_.erase(e.path);
      return {};
    case '1': {
      std::string l = normaliseTarPath(e.link);
      if (l.empty() || l.front() == '/' || hasDotDot(l)) return bad(fmt::format("hard link to '{}' leaves the image root", e.link));
      for (std::size_t i = 0; i != std::string::npos; i = l.find('/', i + 1)) {
        std::size_t end = l.find('/', i + 1);
        if (symlinks_.count(l.substr(0, end))) return bad(fmt::format("hard link to '{}' goes through a symlink", e.link));
        if (end == std::string::npos) break;
      }
      symlinks_.erase(e.path);
      return {};
    }
    case '2':
      if (e.link.empty()) return bad("symlink with an empty target");
      // Absolute targets resolve inside the container's root at run time; relative ones must not climb out.
      if (e.link.front() != '/' && !staysInside(e.path, e.link))
        return bad(fmt::format("symlink to '{}' points outside the image root", e.link));
      if (e.path.empty()) return bad("the root itself cannot be a symlink");
      symlinks_.insert(e.path);
      return {};
    case '3': case '4':
      return bad("device nodes are not allowed in images");
    default:
      return bad(fmt::format("unsupported entry type '{}'", e.type));
  }
}

namespace {

std::uint64_t parseNumber(const char* p, std::size_t n) {
  if (static_cast<unsigned char>(p[0]) & 0x80) {  // base-256
    std::uint64_t v = static_cast<unsigned char>(p[0]) & 0x7f;
    for (std::size_t i = 1; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
    return v;
  }
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n && p[i]; ++i) {
    if (p[i] == ' ') continue;
    if (p[i] < '0' || p[i] > '7') break;
    v = v * 8 + static_cast<std::uint64_t>(p[i] - '0');
  }
  return v;
}

std::string field(const char* p, std::size_t n) { return std::string(p, strnlen(p, n)); }

void parsePax(const std::string& data, std::string& path, std::string& link) {
  std::size_t i = 0;
  while (i < data.size()) {
    std::size_t sp = data.find(' ', i);
    if (sp == std::string::npos) break;
    std::size_t len = std::strtoul(data.substr(i, sp - i).c_str(), nullptr, 10);
    if (len == 0 || i + len > data.size()) break;
    std::string rec = data.substr(sp + 1, i + len - sp - 2);  // without trailing '\n'
    auto eq = rec.find('=');
    if (eq != std::string::npos) {
      if (rec.substr(0, eq) == "path") path = rec.substr(eq + 1);
      if (rec.substr(0, eq) == "linkpath") link = rec.substr(eq + 1);
    }
    i += len;
  }
}

}  // namespace

Result<std::vector<TarEntry>> readTarEntries(const fs::path& tarFile) {
  std::ifstream in(tarFile, std::ios::binary);
  if (!in) return errnoError("open " + tarFile.string(), errno);
  std::vector<TarEntry> out;
  std::string longName, longLink, paxPath, paxLink;
  char h[512];
  int zeros = 0;
  for (;;) {
    if (!in.read(h, 512)) {
      if (zeros > 0 || out.empty()) break;
      return Error{tarFile.string() + ": truncated tar archive (no end-of-archive marker)"};
    }
    if (std::all_of(h, h + 512, [](char c) { return c == 0; })) {
      if (++zeros == 2) break;
      continue;
    }
    zeros = 0;
    // Header checksum: sum of the bytes with the checksum field counted as spaces.
    std::uint64_t sum = 0;
    for (int i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
    if (sum != parseNumber(h + 148, 8)) return Error{tarFile.string() + ": not a tar archive (bad header checksum)"};
    char type = h[156];
    std::uint64_t size = parseNumber(h + 124, 12);
    std::uint64_t padded = (size + 511) / 512 * 512;
    if (type == 'L' || type == 'K' || type == 'x' || type == 'g') {
      if (size > (1u << 20)) return Error{tarFile.string() + ": oversized extended header"};
      std::string data(padded, '\0');
      if (!in.read(data.data(), static_cast<std::streamsize>(padded))) return Error{tarFile.string() + ": truncated"};
      data.resize(size);
      if (type == 'L') longName = field(data.data(), data.size());
      if (type == 'K') longLink = field(data.data(), data.size());
      if (type == 'x') parsePax(data, paxPath, paxLink);
      continue;  // 'g' (global pax) carries no path of one entry
    }
    TarEntry e;
    std::string name = field(h, 100);
    if (std::memcmp(h + 257, "ustar", 5) == 0) {
      std::string prefix = field(h + 345, 155);
      if (!prefix.empty() && std::memcmp(h + 257, "ustar\0", 6) == 0) name = prefix + "/" + name;
    }
    if (!longName.empty()) name = longName;
    if (!paxPath.empty()) name = paxPath;
    e.link = field(h + 157, 100);
    if (!longLink.empty()) e.link = longLink;
    if (!paxLink.empty()) e.link = paxLink;
    longName.clear(), longLink.clear(), paxPath.clear(), paxLink.clear();
    bool absolute = !name.empty() && name.front() == '/';
    e.path = normaliseTarPath(name);
    if (absolute && e.path.front() != '/') e.path = "/" + e.path;
    e.type = type;
    e.size = size;
    out.push_back(std::move(e));
    // Hard links, symlinks, dirs, devices and fifos carry no data even when size says otherwise (ustar).
    if (type == '1' || type == '2' || type == '3' || type == '4' || type == '5' || type == '6') padded = 0;
    in.seekg(static_cast<std::streamoff>(padded), std::ios::cur);
    if (!in) return Error{tarFile.string() + ": truncated tar archive"};
  }
  return out;
}

namespace {

using EvpCtx = CHandle<EVP_MD_CTX, EVP_MD_CTX_free>;

/// Copy `from` to `to` (if `to` is not empty) and return the sha256 hex of the bytes.
Result<std::string> copyHashing(const fs::path& from, const fs::path& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return errnoError("open " + from.string(), errno);
  int out = -1;
  if (!to.empty()) {
    out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
      int err = errno;
      ::close(in);
      return errnoError("create " + to.string(), err);
    }
  }
  EvpCtx ctx(EVP_MD_CTX_new());
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 16);
  Status st;
  for (;;) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      st = errnoError("read " + from.string(), errno);
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
    for (ssize_t off = 0; out >= 0 && off < n;) {
      ssize_t w = ::write(out, buf.data() + off, static_cast<std::size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        st = errnoError("write " + to.string(), errno);
        break;
      }
      off += w;
    }
    if (!st) break;
  }
  ::close(in);
  if (out >= 0) ::close(out);
  if (!st) return st.error();
  unsigned char md[32];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

bool isGzip(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  unsigned char m[2] = {0, 0};
  in.read(reinterpret_cast<char*>(m), 2);
  return in && m[0] == 0x1f && m[1] == 0x8b;
}

/// Turn a copied layer into a plain tar file next to it.
Result<fs::path> plainTar(const fs::path& copy) {
  if (!isGzip(copy)) return copy;
  fs::path tar = copy;
  tar += ".tar";
  auto r = runCommand({"gzip", "-d", "-c", "-q", "--", copy.string()}, std::chrono::minutes(10), tar);
  if (!r) return r.error();
  if (r->exitCode != 0) return Error{"decompress " + copy.filename().string() + ": " + r->err};
  std::error_code ec;
  fs::remove(copy, ec);
  return tar;
}

struct Whiteouts {
  std::vector<std::string> remove;  // paths hidden by this layer
  std::vector<std::string> opaque;  // dirs whose lower contents this layer hides
};

/// True if no component of `rel` below `root` is a symlink on disk (so removing it stays inside).
bool noSymlinkOnDisk(const fs::path& root, const std::string& rel) {
  fs::path p = root;
  std::size_t i = 0;
  std::error_code ec;
  while (i <= rel.size()) {
    std::size_t j = rel.find('/', i);
    if (j == std::string::npos) j = rel.size();
    p /= rel.substr(i, j - i);
    if (j < rel.size() && fs::is_symlink(fs::symlink_status(p, ec))) return false;
    i = j + 1;
  }
  return true;
}

/// Check every entry of one layer, note its whiteouts and the unpacked size, then extract it into `root`.
Status applyLayer(const fs::path& tar, const fs::path& root, TarChecker& checker, bool ociLayer,
                  std::uint64_t& size) {
  auto entries = readTarEntries(tar);
  if (!entries) return entries.error();
  Whiteouts wo;
  for (auto& e : *entries) {
    if (auto st = checker.check(e); !st) return st;
    if (e.type == '0' || e.type == '\0' || e.type == '7') size += e.size;
    if (!ociLayer) continue;
    auto slash = e.path.rfind('/');
    std::string base = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
    std::string dir = slash == std::string::npos ? "" : e.path.substr(0, slash);
    if (base == ".wh..wh..opq")
      wo.opaque.push_back(dir);
    else if (base.rfind(".wh.", 0) == 0)
      wo.remove.push_back(dir.empty() ? base.substr(4) : dir + "/" + base.substr(4));
  }
  std::error_code ec;
  for (auto& d : wo.opaque) {
    if (!noSymlinkOnDisk(root, d)) return Error{"opaque whiteout '" + d + "' goes through a symlink"};
    fs::path p = d.empty() ? root : root / d;
    if (fs::is_symlink(fs::symlink_status(p, ec)) || !fs::is_directory(p, ec)) continue;
    for (auto& c : fs::directory_iterator(p, ec)) fs::remove_all(c.path(), ec);
  }
  for (auto& r : wo.remove) {
    if (!noSymlinkOnDisk(root, r)) return Error{"whiteout '" + r + "' goes through a symlink"};
    fs::remove_all(root / r, ec);  // a symlink itself is removed, never followed
  }
  std::vector<std::string> argv{"tar",           "--extract",   "--file", tar.string(), "--directory",
                                root.string(),   "--numeric-owner", "--preserve-permissions",
                                "--no-overwrite-dir"};
  if (::geteuid() == 0) argv.push_back("--same-owner");
  if (ociLayer) argv.insert(argv.end(), {"--exclude=.wh.*"});
  auto r = runCommand(argv, std::chrono::minutes(10));
  if (!r) return r.error();
  if (r->exitCode != 0) return Error{"tar extract: " + r->err};
  return {};
}

struct TmpDir {
  fs::path path;
  ~TmpDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

std::string digestHex(const std::string& digest) {
  if (digest.rfind("sha256:", 0) != 0) return "";
  std::string h = digest.substr(7);
  if (h.size() != 64 || h.find_first_not_of("0123456789abcdef") != std::string::npos) return "";
  return h;
}

bool mediaTypeOk(const std::string& mt) {
  return mt.empty() || mt.find("tar") != std::string::npos || mt.find("layer") != std::string::npos;
}

}  // namespace

ImageStore::ImageStore(fs::path dir) : dir_(std::move(dir)) {}

fs::path ImageStore::rootfs(const std::string& name) const { return dir_ / name / "rootfs"; }

bool ImageStore::has(const std::string& name) const {
  std::error_code ec;
  return fs::is_directory(rootfs(name), ec) && fs::exists(dir_ / name / "image.info", ec);
}

std::optional<ImageInfoData> ImageStore::info(const std::string& name) const {
  auto text = readFile(dir_ / name / "image.info", 4096);
  if (!text) return std::nullopt;
  ImageInfoData d;
  d.name = name;
  std::istringstream in(*text);
  std::string k, v;
  while (in >> k >> v) {
    if (k == "digest") d.digest = v;
    if (k == "size") d.sizeBytes = std::stoull(v);
  }
  return d;
}

Result<ImageInfoData> ImageStore::import(const std::string& name, const fs::path& source, const std::string& inUseBy) {
  if (!validWorkloadName(name)) return Error{"image name '" + name + "' is invalid"};
  if (!source.is_absolute()) return Error{"image source '" + source.string() + "' must be an absolute path"};
  std::error_code ec;
  auto st = fs::status(source, ec);
  if (ec || !fs::exists(st)) return Error{"image source '" + source.string() + "' does not exist"};
  if (auto s = makeDirs(dir_, 0700); !s) return s.error();
  TmpDir tmp;
  std::string tmpl = (dir_ / (".import-" + name + "-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) return errnoError("create temp dir in " + dir_.string(), errno);
  tmp.path = tmpl;
  fs::path root = tmp.path / "rootfs";
  fs::create_directory(root, ec);
  ::chmod(root.c_str(), 0755);
  ImageInfoData info;
  info.name = name;
  TarChecker checker;

  if (fs::is_directory(st)) {
    // OCI image layout: index.json -> manifest -> layers in order.
    auto blob = [&](const std::string& digest) { return source / "blobs" / "sha256" / digestHex(digest); };
    auto readJson = [&](const fs::path& p) -> Result<json::Value> {
      auto t = readFile(p, 16 << 20);
      if (!t) return Error{"OCI layout: " + t.error().message};
      auto v = json::parse(*t);
      if (!v) return Error{"OCI layout: " + p.filename().string() + ": " + v.error().message};
      return v;
    };
    auto index = readJson(source / "index.json");
    if (!index) return index.error();
    auto& mans = (*index)["manifests"];
    if (mans.size() == 0) return Error{"OCI layout " + source.string() + ": index.json lists no manifests"};
    std::string mdigest = mans[0]["digest"].string();
    for (std::size_t depth = 0;; ++depth) {
      if (digestHex(mdigest).empty()) return Error{"OCI layout: bad manifest digest '" + mdigest + "'"};
      auto mtext = readFile(blob(mdigest), 16 << 20);
      if (!mtext) return Error{"OCI layout: manifest " + mdigest + ": " + mtext.error().message};
      auto sum = copyHashing(blob(mdigest), "");
      if (!sum || *sum != digestHex(mdigest)) return Error{"OCI layout: manifest " + mdigest + " fails its digest check"};
      auto m = json::parse(*mtext);
      if (!m) return Error{"OCI layout: manifest: " + m.error().message};
      if ((*m)["manifests"].isArray() && depth < 2) {  // a nested image index
        if ((*m)["manifests"].size() == 0) return Error{"OCI layout: empty image index"};
        mdigest = (*m)["manifests"][0]["digest"].string();
        continue;
      }
      info.digest = mdigest;
      auto& layers = (*m)["layers"];
      if (!layers.isArray()) return Error{"OCI layout: manifest " + mdigest + " has no layers"};
      for (std::size_t i = 0; i < layers.size(); ++i) {
        std::string ld = layers[i]["digest"].string();
        std::string mt = layers[i]["mediaType"].string();
        if (digestHex(ld).empty()) return Error{"OCI layout: layer " + std::to_string(i) + " has a bad digest"};
        if (!mediaTypeOk(mt) || mt.find("zstd") != std::string::npos)
          return Error{"OCI layout: layer media type '" + mt + "' is not supported (tar or tar+gzip)"};
        fs::path copy = tmp.path / ("layer" + std::to_string(i));
        auto h = copyHashing(blob(ld), copy);
        if (!h) return Error{"OCI layout: layer " + ld + ": " + h.error().message};
        if (*h != digestHex(ld)) return Error{"OCI layout: layer " + ld + " fails its digest check"};
        auto tar = plainTar(copy);
        if (!tar) return tar.error();
        if (auto s = applyLayer(*tar, root, checker, true, info.sizeBytes); !s)
          return Error{"layer " + std::to_string(i) + ": " + s.error().message};
        fs::remove(*tar, ec);
      }
      break;
    }
  } else {
    fs::path copy = tmp.path / "source";
    auto h = copyHashing(source, copy);
    if (!h) return h.error();
    info.digest = "sha256:" + *h;
    auto tar = plainTar(copy);
    if (!tar) return tar.error();
    if (auto s = applyLayer(*tar, root, checker, false, info.sizeBytes); !s) return s.error();
    fs::remove(*tar, ec);
  }

  // Mount points the runtime needs in a root that may later be shared read-only.
  for (const char* d : {"proc", "sys", "dev", "tmp"}) {
    fs::path p = root / d;
    if (!fs::exists(fs::symlink_status(p, ec))) fs::create_directory(p, ec);
  }
  if (auto old = this->info(name); old && old->digest == info.digest && has(name)) {
    old->unchanged = true;
    return *old;
  }
  if (!inUseBy.empty() && has(name))
    return Error{"image '" + name + "' has other content and is shared read-only by running container '" + inUseBy +
                     "'; stop it first",
                 EBUSY};
  std::string infoText = fmt::format("digest {}\nsize {}\nsource {}\n", info.digest, info.sizeBytes, source.string());
  if (auto s = writeFileAtomic(tmp.path / "image.info", infoText); !s) return s.error();
  fs::path final = dir_ / name;
  if (fs::exists(final, ec)) {
    fs::path aside = dir_ / (".old-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(aside, ec);
    if (::rename(final.c_str(), aside.c_str()) != 0) return errnoError("move old image " + final.string(), errno);
    if (::rename(tmp.path.c_str(), final.c_str()) != 0) {
      int err = errno;
      (void)::rename(aside.c_str(), final.c_str());
      return errnoError("install image " + final.string(), err);
    }
    fs::remove_all(aside, ec);
  } else if (::rename(tmp.path.c_str(), final.c_str()) != 0) {
    return errnoError("install image " + final.string(), errno);
  }
  tmp.path.clear();
  (void)fsyncDir(dir_);
  return info;
}

}  // namespace outrider::vmm
