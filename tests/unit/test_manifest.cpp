#include <doctest/doctest.h>

#include <string>

#include "outrider/common/config.hpp"
#include "outrider/common/manifest.hpp"

using outrider::parseManifest;
using outrider::validateManifest;

namespace {

const char* kGood = R"(version = 7

[[vm]]
name = "web"
vcpus = 2
memory_mib = 512
arch = "x86_64"
kernel = { path = "/var/lib/outrider/images/vmlinux", initrd = "/var/lib/outrider/images/initrd.gz", cmdline = "console=ttyS0" }
network = { mode = "user" }
  [[vm.disk]]
  base_image = "/var/lib/outrider/images/base.qcow2"
  size_mib = 2048

[[vm]]
name = "idle"
stopped = true
  [[vm.disk]]
  base_image = "/srv/base.raw"
  format = "raw"

[[container]]
name = "sensor"
image = "busybox"
image_source = "/var/lib/outrider/import/busybox.tar"
args = ["sh", "-c", "echo hi"]
env = ["A=1", "B="]
memory_mib = 64
cpu_millis = 500
pids_max = 32
capabilities = ["CAP_NET_BIND_SERVICE"]
restart = "on-failure"
read_only_root = true
  [[container.mount]]
  source = "/srv/data"
  target = "/data"
  read_only = true
)";

std::string errorOf(const std::string& text) {
  auto m = parseManifest(text, "m.toml");
  return m ? std::string() : m.error().message;
}

std::string withVm(const std::string& extra) {
  return "version = 1\n[[vm]]\nname = \"v\"\nkernel = { path = \"/k\" }\n" + extra;
}
std::string withCt(const std::string& extra) { return "version = 1\n[[container]]\nname = \"c\"\nimage = \"img\"\n" + extra; }

}  // namespace

TEST_CASE("a full manifest maps onto NodeManifest") {
  auto m = parseManifest(kGood, "m.toml");
  REQUIRE_MESSAGE(m, (m ? "" : m.error().message));
  CHECK(m->version() == 7);
  REQUIRE(m->vms_size() == 2);
  const auto& web = m->vms(0);
  CHECK(web.name() == "web");
  CHECK(web.vcpus() == 2);
  CHECK(web.memory_mib() == 512);
  CHECK(web.kernel().kernel() == "/var/lib/outrider/images/vmlinux");
  CHECK(web.kernel().cmdline() == "console=ttyS0");
  CHECK(web.network().mode() == outrider::v1::VmNetwork::USER);
  REQUIRE(web.disks_size() == 1);
  CHECK(web.disks(0).size_mib() == 2048);
  CHECK_FALSE(web.stopped());
  CHECK(m->vms(1).stopped());
  CHECK(m->vms(1).vcpus() == 1);        // default
  CHECK(m->vms(1).memory_mib() == 256);  // default
  REQUIRE(m->containers_size() == 1);
  const auto& c = m->containers(0);
  CHECK(c.memory_bytes() == 64ull << 20);
  CHECK(c.restart() == outrider::v1::ContainerSpec::ON_FAILURE);
  CHECK(c.args_size() == 3);
  REQUIRE(c.mounts_size() == 1);
  CHECK(c.mounts(0).read_only());
  CHECK(validateManifest(*m));
}

TEST_CASE("bad manifests are refused with file, line and the field") {
  CHECK(errorOf("version = ") .find("m.toml:1") == 0);
  CHECK(errorOf("[[vm]]\nname = \"a\"\n").find("version: required") != std::string::npos);
  CHECK(errorOf("version = 0\n").find("positive") != std::string::npos);
  CHECK(errorOf("version = 1\nvms = 3\n").find("m.toml:2: vms: unknown key") == 0);

  auto e = errorOf(withVm("memory_mib = 8\n"));
  CHECK(e == "m.toml:2: vm 'v': memory_mib: 8 is outside 16..4194304");
  CHECK(errorOf(withVm("vcpus = 0\n")).find("vcpus: 0 is outside 1..64") != std::string::npos);
  CHECK(errorOf(withVm("vcpus = 1000\n")).find("vcpus: 1000 is outside 0..64") != std::string::npos);
  CHECK(errorOf(withVm("memory = 8\n")).find("memory: unknown key") != std::string::npos);
  CHECK(errorOf(withVm("arch = \"riscv64\"\n")).find("arch: 'riscv64'") != std::string::npos);
  CHECK(errorOf(withVm("network = { mode = \"nat\" }\n")).find("mode: 'nat' is not none") != std::string::npos);
  CHECK(errorOf(withVm("network = { mode = \"bridge\" }\n")).find("network.bridge") != std::string::npos);
  CHECK(errorOf(withVm("network = { mode = \"user\", mac = \"zz\" }\n")).find("network.mac") != std::string::npos);
  CHECK(errorOf("version = 1\n[[vm]]\nname = \"../x\"\nkernel = { path = \"/k\" }\n").find("name: 1-64") != std::string::npos);
  CHECK(errorOf("version = 1\n[[vm]]\nname = \"a/b\"\nkernel = { path = \"/k\" }\n").find("name:") != std::string::npos);
  CHECK(errorOf("version = 1\n[[vm]]\nname = \"v\"\n").find("nothing to boot") != std::string::npos);
  CHECK(errorOf("version = 1\n[[vm]]\nname = \"v\"\nkernel = { path = \"/a/../etc/k\" }\n").find("kernel.path") !=
        std::string::npos);
  CHECK(errorOf("version = 1\n[[vm]]\nname = \"v\"\nkernel = { path = \"k\" }\n").find("kernel.path") != std::string::npos);
  CHECK(errorOf(withVm("[[vm.disk]]\nbase_image = \"/b\"\nformat = \"vmdk\"\n")).find("disk[0].format") != std::string::npos);
  CHECK(errorOf(withVm("[[vm]]\nname = \"v\"\nkernel = { path = \"/k\" }\n")).find("vm 'v' is listed twice") !=
        std::string::npos);

  CHECK(errorOf(withCt("restart = \"sometimes\"\n")).find("restart: 'sometimes'") != std::string::npos);
  CHECK(errorOf(withCt("env = [\"NOEQUALS\"]\n")).find("env: 'NOEQUALS'") != std::string::npos);
  CHECK(errorOf(withCt("memory_mib = 2\n")).find("memory_mib: below 4 MiB") != std::string::npos);
  CHECK(errorOf(withCt("capabilities = [\"net_admin\"]\n")).find("capabilities") != std::string::npos);
  CHECK(errorOf(withCt("args = [1, 2]\n")).find("args: expected an array of strings") != std::string::npos);
  CHECK(errorOf(withCt("[[container.mount]]\nsource = \"/a\"\ntarget = \"../b\"\n")).find("mount[0].target") !=
        std::string::npos);
  CHECK(errorOf("version = 1\n[[container]]\nname = \"c\"\n").find("image:") != std::string::npos);
  CHECK(errorOf("version = 1\ncontainer = 3\n").find("expected tables ([[container]])") != std::string::npos);
}

TEST_CASE("a manifest that arrives as protobuf is checked the same way") {
  auto m = parseManifest(kGood, "m.toml");
  REQUIRE(m);
  auto bad = *m;
  bad.mutable_vms(0)->set_memory_mib(1);
  auto s = validateManifest(bad);
  REQUIRE_FALSE(s);
  CHECK(s.error().message == "vm 'web': memory_mib: 1 is outside 16..4194304");
  bad = *m;
  bad.mutable_containers(0)->set_name("..");
  CHECK_FALSE(validateManifest(bad));
  bad = *m;
  *bad.add_vms() = m->vms(0);
  CHECK(validateManifest(bad).error().message == "vm 'web' is listed twice");
  bad = *m;
  bad.set_version(0);
  CHECK_FALSE(validateManifest(bad));
}

TEST_CASE("netd.toml hands its [[tunnel]] tables to parseTunnels") {
  const char* text = R"([api]
socket = "/tmp/x.sock"

[[tunnel]]
interface = "wgo-edge"
addresses = ["10.99.100.10/24"]
probe_interval_ms = 1000
  [[tunnel.hub]]
  name = "home"
  endpoint = "10.99.1.2:51820"
  tier = 0
  public_key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
  allowed_ips = ["10.99.200.0/24"]
  probe_address = "10.99.100.1"
)";
  auto cfg = outrider::ConfigReader::parse(text, "netd.toml");
  cfg.claim("tunnel");
  CHECK(cfg.str("api.socket", "") == "/tmp/x.sock");
  cfg.finish();  // the claimed subtree is not an unknown key
  auto t = outrider::parseTunnels(cfg.text(), cfg.source());
  REQUIRE_MESSAGE(t, (t ? "" : t.error().message));
  REQUIRE(t->size() == 1);
  CHECK((*t)[0].interface() == "wgo-edge");
  CHECK((*t)[0].probe_interval_ms() == 1000);
  REQUIRE((*t)[0].hubs_size() == 1);
  CHECK((*t)[0].hubs(0).endpoint() == "10.99.1.2:51820");

  auto bad = outrider::parseTunnels("[[tunnel]]\ninterface = \"x\"\nmtu = 3\n", "netd.toml");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message == "netd.toml:3: tunnel 'x': mtu: unknown key (misspelt, or not valid here)");
}
