// Image import: tar entries that would escape the root are refused before anything is extracted;
// tarballs and OCI layouts (layers in order, whiteouts) unpack into IMAGES/<name>/rootfs.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>

#include "outrider/common/crypto.hpp"
#include "outrider/vmm/image_store.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::vmm;
namespace fs = std::filesystem;

namespace {

/// A minimal ustar writer for crafted archives.
class TarBuilder {
 public:
  TarBuilder& add(const std::string& name, char type, const std::string& data = "", const std::string& link = "") {
    char h[512] = {};
    std::memcpy(h, name.data(), std::min<std::size_t>(name.size(), 100));
    std::snprintf(h + 100, 8, "%07o", type == '5' ? 0755 : 0644);
    std::snprintf(h + 108, 8, "%07o", 0);
    std::snprintf(h + 116, 8, "%07o", 0);
    std::snprintf(h + 124, 12, "%011o", static_cast<unsigned>(data.size()));
    std::snprintf(h + 136, 12, "%011o", 0);
    h[156] = type;
    std::memcpy(h + 157, link.data(), std::min<std::size_t>(link.size(), 100));
    std::memcpy(h + 257, "ustar\0", 6);
    std::memcpy(h + 263, "00", 2);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::snprintf(h + 148, 8, "%06o", sum);
    out_.append(h, 512);
    out_ += data;
    out_.append((512 - data.size() % 512) % 512, '\0');
    return *this;
  }
  void write(const fs::path& p) const {
    std::ofstream f(p, std::ios::binary);
    f << out_ << std::string(1024, '\0');
  }
  std::string bytes() const { return out_ + std::string(1024, '\0'); }

 private:
  std::string out_;
};

std::string sha(const std::string& s) {
  auto d = crypto::sha256(s);
  return crypto::hex(std::span<const std::uint8_t>(d));
}

std::string checkAll(std::initializer_list<TarEntry> entries) {
  TarChecker c;
  for (auto& e : entries)
    if (auto st = c.check(e); !st) return st.error().message;
  return "";
}

}  // namespace

TEST_CASE("tar entry checks") {
  CHECK(checkAll({{"bin", '5'}, {"bin/busybox", '0'}, {"bin/sh", '2', "busybox"}, {"bin/ls", '2', "/bin/busybox"}}) ==
        "");
  CHECK(checkAll({{"/etc/passwd", '0'}}).find("absolute path") != std::string::npos);
  CHECK(checkAll({{"a/../../etc/passwd", '0'}}).find("'..'") != std::string::npos);
  CHECK(checkAll({{"evil", '2', "/etc"}, {"evil/passwd", '0'}}).find("through the symlink 'evil'") != std::string::npos);
  CHECK(checkAll({{"a/b", '2', "../../.."}}).find("outside the image root") != std::string::npos);
  CHECK(checkAll({{"a/b", '2', "../c"}}) == "");
  CHECK(checkAll({{"h", '1', "/etc/shadow"}}).find("hard link") != std::string::npos);
  CHECK(checkAll({{"h", '1', "../x"}}).find("hard link") != std::string::npos);
  CHECK(checkAll({{"s", '2', "/"}, {"h", '1', "s/etc/shadow"}}).find("through a symlink") != std::string::npos);
  CHECK(checkAll({{"dev/sda", '4'}}).find("device") != std::string::npos);
  // A symlink replaced by a real directory no longer counts as one.
  CHECK(checkAll({{"d", '2', "/tmp"}, {"d", '5'}, {"d/f", '0'}}) == "");
  CHECK(normaliseTarPath("./a//b/./c/") == "a/b/c");
  CHECK(normaliseTarPath("./") == "");
}

TEST_CASE("readTarEntries: ustar, GNU long names, pax paths; bad archives") {
  outrider::test::TempDir dir("tar");
  std::string longName(150, 'n');
  TarBuilder b;
  b.add("./etc/", '5').add("./etc/hosts", '0', "127.0.0.1 x\n").add("././@LongLink", 'L', longName + '\0');
  b.add("short", '0', "data").add("pax", 'x', "20 path=/abs/escape\n").add("ignored", '0', "x");
  b.write(dir / "a.tar");
  auto e = readTarEntries(dir / "a.tar");
  REQUIRE_MESSAGE(e.ok(), (e.ok() ? "" : e.error().message));
  REQUIRE(e->size() == 4);
  CHECK((*e)[0].path == "etc");
  CHECK((*e)[1].path == "etc/hosts");
  CHECK((*e)[1].size == 12);
  CHECK((*e)[2].path == longName);
  CHECK((*e)[3].path == "/abs/escape");  // the pax path wins, and is caught as absolute by the checker
  std::ofstream(dir / "junk.tar") << std::string(2048, 'z');
  CHECK_FALSE(readTarEntries(dir / "junk.tar").ok());
}

TEST_CASE("import a tarball: digest, atomic install, refusal leaves nothing behind") {
  outrider::test::TempDir dir("img");
  ImageStore store(dir / "images");
  TarBuilder good;
  good.add("bin/", '5').add("bin/hello", '0', "hi\n").add("bin/alias", '2', "", "hello");
  good.write(dir / "good.tar");
  auto r = store.import("base", dir / "good.tar");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->digest == "sha256:" + sha(good.bytes()));
  CHECK(r->sizeBytes == 3);
  CHECK(store.has("base"));
  CHECK(fs::is_symlink(store.rootfs("base") / "bin" / "alias"));
  CHECK(fs::is_directory(store.rootfs("base") / "proc"));
  auto again = store.import("base", dir / "good.tar");
  REQUIRE(again.ok());
  CHECK(again->unchanged);

  TarBuilder evil;
  evil.add("link", '2', "", "/").add("link/tmp/pwned", '0', "x");
  evil.write(dir / "evil.tar");
  auto bad = store.import("evil", dir / "evil.tar");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("through the symlink 'link'") != std::string::npos);
  CHECK_FALSE(store.has("evil"));
  CHECK_FALSE(fs::exists("/tmp/pwned"));
  for (auto& e : fs::directory_iterator(dir / "images")) CHECK(e.path().filename().string().rfind(".import", 0) != 0);

  // gzip'd tarball
  REQUIRE(outrider::test::run({"gzip", "-k", (dir / "good.tar").string()}, dir / "gz.log") == 0);
  auto gz = store.import("gz", dir / "good.tar.gz");
  REQUIRE_MESSAGE(gz.ok(), (gz.ok() ? "" : gz.error().message));
  CHECK(fs::exists(store.rootfs("gz") / "bin" / "hello"));

  CHECK_FALSE(store.import("x", "relative.tar").ok());
  CHECK_FALSE(store.import("x", dir / "missing.tar").ok());
  CHECK_FALSE(store.import("../x", dir / "good.tar").ok());
}

TEST_CASE("import an OCI layout: layers in order, whiteouts and opaque dirs, digests checked") {
  outrider::test::TempDir dir("oci");
  fs::path lay = dir / "layout";
  fs::create_directories(lay / "blobs" / "sha256");
  auto blob = [&](const std::string& data) {
    auto h = sha(data);
    std::ofstream(lay / "blobs" / "sha256" / h, std::ios::binary) << data;
    return "sha256:" + h;
  };
  TarBuilder l1, l2;
  l1.add("etc/", '5').add("etc/a", '0', "A").add("etc/b", '0', "B").add("opt/", '5').add("opt/old", '0', "o");
  l2.add("etc/.wh.a", '0').add("opt/", '5').add("opt/.wh..wh..opq", '0').add("opt/new", '0', "n");
  std::string d1 = blob(l1.bytes()), d2 = blob(l2.bytes());
  std::string manifest = "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\","
                         "\"digest\":\"" + blob("{}") + "\",\"size\":2},\"layers\":["
                         "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"" + d1 + "\"},"
                         "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"" + d2 + "\"}]}";
  std::string md = blob(manifest);
  std::ofstream(lay / "oci-layout") << "{\"imageLayoutVersion\":\"1.0.0\"}";
  std::ofstream(lay / "index.json") << "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":"
                                       "\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" << md << "\"}]}";
  ImageStore store(dir / "images");
  auto r = store.import("oci", lay);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  CHECK(r->digest == md);
  auto root = store.rootfs("oci");
  CHECK_FALSE(fs::exists(root / "etc" / "a"));
  CHECK(fs::exists(root / "etc" / "b"));
  CHECK_FALSE(fs::exists(root / "etc" / ".wh.a"));
  CHECK_FALSE(fs::exists(root / "opt" / "old"));
  CHECK(fs::exists(root / "opt" / "new"));
  CHECK_FALSE(fs::exists(root / "opt" / ".wh..wh..opq"));

  // A layer whose bytes do not match its digest is refused.
  std::ofstream(lay / "blobs" / "sha256" / d2.substr(7), std::ios::binary | std::ios::app) << "tamper";
  auto bad = store.import("oci2", lay);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("digest check") != std::string::npos);
  CHECK_FALSE(store.has("oci2"));
}
