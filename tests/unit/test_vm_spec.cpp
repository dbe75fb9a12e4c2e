// VM specs: validation of every bad case, memory admission, XML generation and escaping.
#include <doctest/doctest.h>

#include <fstream>

#include "outrider/vmm/vm_spec.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::vmm;
using outrider::v1::LocalError;

namespace {

struct Files {
  test::TempDir dir{"vmspec"};
  std::string kernel = (dir / "vmlinux").string();
  std::string initrd = (dir / "initrd").string();
  std::string base = (dir / "base.qcow2").string();
  Files() {
    std::ofstream(kernel) << "k";
    std::ofstream(initrd) << "i";
    std::ofstream(base) << "b";
  }
};

HostInfo host() {
  HostInfo h;
  h.memTotalMib = 4096;
  h.threads = 2;
  h.arch = "x86_64";
  h.archs = {"x86_64"};
  return h;
}

v1::VmSpec good(const Files& f) {
  v1::VmSpec s;
  s.set_name("web-1");
  s.set_vcpus(1);
  s.set_memory_mib(256);
  s.mutable_kernel()->set_kernel(f.kernel);
  s.mutable_kernel()->set_initrd(f.initrd);
  s.mutable_kernel()->set_cmdline("console=ttyS0 quiet");
  auto* d = s.add_disks();
  d->set_base_image(f.base);
  return s;
}


}  // namespace

TEST_CASE("a good spec passes validation") {
  Files f;
  auto st = validateSpec(good(f), host(), {});
  CHECK_MESSAGE(st.ok(), (st ? "" : st.error().message));
}

TEST_CASE("every bad spec is refused with the right code and a message naming the problem") {
  Files f;
  AdmissionLimits lim;
  auto check = [&](v1::VmSpec s, int code, const std::string& words) {
    auto st = validateSpec(s, host(), lim);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == code);
    INFO(st.error().message);
    CHECK(st.error().message.find(words) != std::string::npos);
  };
  auto s = good(f);
  s.set_name("../etc");
  check(s, LocalError::BAD_REQUEST, "invalid");
  s = good(f);
  s.set_name("");
  check(s, LocalError::BAD_REQUEST, "invalid");
  s = good(f);
  s.set_name("-rf");
  check(s, LocalError::BAD_REQUEST, "invalid");
  s = good(f);
  s.set_vcpus(0);
  check(s, LocalError::BAD_REQUEST, "at least 1");
  s = good(f);
  s.set_vcpus(65);
  check(s, LocalError::BAD_REQUEST, "more than 64");
  s = good(f);
  s.set_vcpus(3);  // host has 2 threads, overcommit 1.0
  check(s, LocalError::REFUSED, "threads");
  s = good(f);
  s.set_memory_mib(15);
  check(s, LocalError::BAD_REQUEST, "less than 16");
  s = good(f);
  s.set_memory_mib(1ull << 40);
  check(s, LocalError::BAD_REQUEST, "absurd");
  s = good(f);
  s.set_arch("aarch64");
  check(s, LocalError::REFUSED, "cannot run aarch64");
  s = good(f);
  s.set_arch("sparc");
  check(s, LocalError::BAD_REQUEST, "not supported");
  s = good(f);
  s.mutable_kernel()->set_kernel(f.dir.path().string() + "/missing");
  check(s, LocalError::NOT_FOUND, "does not exist");
  s = good(f);
  s.mutable_kernel()->set_kernel("vmlinux");
  check(s, LocalError::BAD_REQUEST, "not an absolute path");
  s = good(f);
  s.mutable_kernel()->set_initrd(f.dir.path().string() + "/../x/initrd");
  check(s, LocalError::BAD_REQUEST, "'..'");
  s = good(f);
  s.mutable_disks(0)->set_base_image(f.dir.path().string() + "/nope.qcow2");
  check(s, LocalError::NOT_FOUND, "does not exist");
  s = good(f);
  s.mutable_disks(0)->set_base_image(f.dir.path().string());
  check(s, LocalError::BAD_REQUEST, "not a regular file");
  s = good(f);
  s.mutable_disks(0)->set_format("vmdk");
  check(s, LocalError::BAD_REQUEST, "not qcow2 or raw");
  s = good(f);
  s.mutable_network()->set_mode(v1::VmNetwork::BRIDGE);
  s.mutable_network()->set_bridge("br0'/><x");
  check(s, LocalError::BAD_REQUEST, "bridge name");
  s = good(f);
  s.mutable_network()->set_mode(v1::VmNetwork::USER);
  s.mutable_network()->set_mac("01:00:00:00:00:01");  // multicast
  check(s, LocalError::BAD_REQUEST, "MAC");
  s = good(f);
  s.clear_kernel();
  s.clear_disks();
  check(s, LocalError::BAD_REQUEST, "neither a kernel nor a disk");
}

TEST_CASE("memory admission counts the other managed VMs against MemTotal x overcommit") {
  Files f;
  auto s = good(f);
  s.set_memory_mib(1024);
  AdmissionLimits lim;
  CHECK(admitMemory(s, 3072, host(), lim).ok());
  auto st = admitMemory(s, 3073, host(), lim);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == LocalError::REFUSED);
  CHECK(st.error().message.find("memory_overcommit") != std::string::npos);
  lim.memoryOvercommit = 1.5;
  CHECK(admitMemory(s, 5000, host(), lim).ok());
}

TEST_CASE("xmlEscape escapes markup and drops control characters XML cannot carry") {
  CHECK(xmlEscape("a<b>&'\"") == "a&lt;b&gt;&amp;&apos;&quot;");
  CHECK(xmlEscape(std::string("x\x01y", 3)) == "x&#xFFFD;y");
}

TEST_CASE("domain XML: type, name, metadata, q35, direct kernel boot, overlays, network, serial file, acpi") {
  Files f;
  auto s = good(f);
  s.mutable_kernel()->set_cmdline("console=ttyS0 x='<&>'");
  s.mutable_network()->set_mode(v1::VmNetwork::USER);
  DomainParams p;
  p.accel = "tcg";
  p.overlays = {"/var/lib/outrider/vms/disks/web-1/disk0.qcow2"};
  p.consoleLog = "/var/log/outrider/vms/web-1.console.log";
  p.hash = specHash(s, "tcg");
  auto x = domainXml(s, host(), p);
  INFO(x);
  CHECK(x.find("<domain type='qemu'>") == 0);
  CHECK(x.find("<name>web-1</name>") != std::string::npos);
  CHECK(x.find("<outrider:spec-hash>" + p.hash + "</outrider:spec-hash>") != std::string::npos);
  CHECK(x.find(std::string("xmlns:outrider=\"") + std::string(kMetadataUri) + "\"") != std::string::npos);
  CHECK(x.find("<type arch='x86_64' machine='q35'>hvm</type>") != std::string::npos);
  CHECK(x.find("<kernel>" + f.kernel + "</kernel>") != std::string::npos);
  CHECK(x.find("<cmdline>console=ttyS0 x=&apos;&lt;&amp;&gt;&apos;</cmdline>") != std::string::npos);
  CHECK(x.find("<features><acpi/></features>") != std::string::npos);
  CHECK(x.find("<source file='/var/lib/outrider/vms/disks/web-1/disk0.qcow2'/>") != std::string::npos);
  CHECK(x.find("<interface type='user'>") != std::string::npos);
  CHECK(x.find("<mac address='" + stableMac("web-1") + "'/>") != std::string::npos);
  CHECK(x.find("<serial type='file'>") != std::string::npos);
  CHECK(x.find("<source path='/var/log/outrider/vms/web-1.console.log' append='off'/>") != std::string::npos);
  CHECK(x.find("<on_reboot>restart</on_reboot>") != std::string::npos);

  p.accel = "kvm";
  CHECK(domainXml(s, host(), p).find("<domain type='kvm'>") == 0);
  auto a = s;
  a.set_arch("aarch64");
  CHECK(domainXml(a, host(), p).find("machine='virt'") != std::string::npos);
  auto b = s;
  b.mutable_network()->set_mode(v1::VmNetwork::BRIDGE);
  b.mutable_network()->set_bridge("br0");
  CHECK(domainXml(b, host(), p).find("<source bridge='br0'/>") != std::string::npos);
  auto n = s;
  n.clear_kernel();
  CHECK(domainXml(n, host(), p).find("<boot dev='hd'/>") != std::string::npos);
}

TEST_CASE("specHash ignores `stopped` but not anything that goes into the domain, nor the accelerator") {
  Files f;
  auto s = good(f);
  auto h = specHash(s, "tcg");
  auto t = s;
  t.set_stopped(true);
  CHECK(specHash(t, "tcg") == h);
  t.set_memory_mib(512);
  CHECK(specHash(t, "tcg") != h);
  CHECK(specHash(s, "kvm") != h);
  CHECK(hashFromMetadata(metadataXml(h)) == h);
  CHECK(hashFromMetadata("<x:vm xmlns:x='u'><x:spec-hash>abc</x:spec-hash></x:vm>") == "abc");
  // The defining vmm's instance id rides along; domains from before instance ids have none.
  CHECK(instanceFromMetadata(metadataXml(h, "0123abcd")) == "0123abcd");
  CHECK(hashFromMetadata(metadataXml(h, "0123abcd")) == h);
  CHECK(instanceFromMetadata(metadataXml(h)) == "");
  CHECK(instanceFromMetadata("<y:vm xmlns:y='u'><y:spec-hash>a</y:spec-hash><y:instance>ff</y:instance></y:vm>") == "ff");
  CHECK(validMac(stableMac("anything")));
  CHECK(stableMac("a") != stableMac("b"));
}
