// Container specs: validation of every bad case, the OCI config.json read back field by field, and the
// restart backoff schedule.
#include <doctest/doctest.h>

#include "outrider/vmm/ct_json.hpp"
#include "outrider/vmm/ct_spec.hpp"

using namespace outrider;
using namespace outrider::vmm;

namespace {
v1::ContainerSpec good() {
  v1::ContainerSpec s;
  s.set_name("web");
  s.set_image("busybox");
  s.add_args("sh");
  s.add_env("A=1");
  return s;
}
std::string why(const v1::ContainerSpec& s) {
  auto st = validateSpec(s, 2);
  return st ? "" : st.error().message;
}
std::vector<std::string> strs(const json::Value& v) {
  std::vector<std::string> out;
  for (auto& e : v.array()) out.push_back(e.string());
  return out;
}
}  // namespace

TEST_CASE("a good spec passes validation") { CHECK(why(good()) == ""); }

TEST_CASE("every bad spec is refused with a message naming the field") {
  auto s = good();
  s.set_name("../x");
  CHECK(why(s).find("name '../x' is invalid") != std::string::npos);
  s = good();
  s.set_name("");
  CHECK(!why(s).empty());
  s = good();
  s.set_image("");
  CHECK(why(s).find("image is missing") != std::string::npos);
  s = good();
  s.set_image_source("rel/path.tar");
  CHECK(why(s).find("absolute") != std::string::npos);
  s = good();
  s.add_env("NOEQUALS");
  CHECK(why(s).find("env entry 'NOEQUALS'") != std::string::npos);
  s = good();
  s.add_env("=v");
  CHECK(why(s).find("KEY=value") != std::string::npos);
  s = good();
  auto* m = s.add_mounts();
  m->set_source("relative");
  m->set_target("/data");
  CHECK(why(s).find("mount source 'relative'") != std::string::npos);
  m->set_source("/srv");
  m->set_target("data");
  CHECK(why(s).find("mount target 'data'") != std::string::npos);
  m->set_target("/data/../etc");
  CHECK(why(s).find("'..'") != std::string::npos);
  m->set_target("/data");
  CHECK(why(s) == "");
  s = good();
  s.set_memory_bytes(1u << 20);
  CHECK(why(s).find("below the minimum") != std::string::npos);
  s.set_memory_bytes(4u << 20);
  CHECK(why(s) == "");
  s = good();
  s.set_cpu_millis(2001);
  CHECK(why(s).find("cpu_millis 2001") != std::string::npos);
  s.set_cpu_millis(2000);
  CHECK(why(s) == "");
  s = good();
  s.set_pids_max(0);  // unlimited
  CHECK(why(s) == "");
  s.set_pids_max(100000000);
  CHECK(why(s).find("pids_max") != std::string::npos);
  s = good();
  s.add_capabilities("CAP_NET_BIND_SERVICE");
  CHECK(why(s) == "");
  s.add_capabilities("CAP_FLY");
  CHECK(why(s).find("unknown capability 'CAP_FLY'") != std::string::npos);
  s = good();
  s.add_capabilities("CAP_KILL");
  s.add_capabilities("CAP_KILL");
  CHECK(why(s).find("twice") != std::string::npos);
  s = good();
  s.set_cwd("tmp");
  CHECK(why(s).find("cwd") != std::string::npos);
  s = good();
  s.set_hostname("bad host");
  CHECK(why(s).find("hostname") != std::string::npos);
}

TEST_CASE("config.json carries the spec: namespaces, limits, capabilities, mounts, read-only root") {
  auto s = good();
  s.clear_args();
  s.add_args("sh");
  s.add_args("-c");
  s.add_args("echo \"quoted\" \\ and\nnewline");
  s.set_cwd("/srv");
  s.set_hostname("h1");
  s.set_read_only_root(true);
  s.set_cpu_millis(500);
  s.set_memory_bytes(64u << 20);
  s.set_pids_max(32);
  s.add_capabilities("CAP_NET_BIND_SERVICE");
  auto* m = s.add_mounts();
  m->set_source("/var/data");
  m->set_target("/data");
  m->set_read_only(true);
  BundleOptions o;
  o.rootfsPath = "/images/busybox/rootfs";
  o.cgroupsPath = "/outrider/web";
  o.memorySwapLimit = true;
  auto doc = json::parse(renderConfigJson(s, o));
  REQUIRE_MESSAGE(doc.ok(), (doc.ok() ? "" : doc.error().message));
  auto& c = *doc;
  CHECK(c["process"]["terminal"].isBool());
  CHECK_FALSE(c["process"]["terminal"].boolean());
  CHECK(strs(c["process"]["args"]) == std::vector<std::string>{"sh", "-c", "echo \"quoted\" \\ and\nnewline"});
  auto env = strs(c["process"]["env"]);
  CHECK(env.size() == 2);
  CHECK(env[0].rfind("PATH=", 0) == 0);
  CHECK(env[1] == "A=1");
  CHECK(c["process"]["cwd"].string() == "/srv");
  CHECK(c["process"]["noNewPrivileges"].boolean());
  for (auto set : {"bounding", "effective", "permitted"})
    CHECK(strs(c["process"]["capabilities"][set]) == std::vector<std::string>{"CAP_NET_BIND_SERVICE"});
  CHECK(c["process"]["capabilities"]["ambient"].size() == 0);
  CHECK(c["root"]["path"].string() == "/images/busybox/rootfs");
  CHECK(c["root"]["readonly"].boolean());
  CHECK(c["hostname"].string() == "h1");
  auto& lin = c["linux"];
  CHECK(lin["cgroupsPath"].string() == "/outrider/web");
  CHECK(lin["resources"]["memory"]["limit"].number() == double(64u << 20));
  CHECK(lin["resources"]["memory"]["swap"].number() == double(64u << 20));
  CHECK(lin["resources"]["cpu"]["quota"].number() == 50000);
  CHECK(lin["resources"]["cpu"]["period"].number() == 100000);
  CHECK(lin["resources"]["pids"]["limit"].number() == 32);
  std::vector<std::string> ns;
  for (auto& n : lin["namespaces"].array()) ns.push_back(n["type"].string());
  CHECK(ns == std::vector<std::string>{"pid", "network", "ipc", "uts", "mount"});
  CHECK(strs(lin["maskedPaths"]).size() >= 5);
  CHECK(strs(lin["readonlyPaths"]).size() >= 5);
  bool proc = false, dev = false, data = false, tmp = false;
  for (auto& mt : c["mounts"].array()) {
    auto d = mt["destination"].string();
    proc |= d == "/proc" && mt["type"].string() == "proc";
    dev |= d == "/dev" && mt["type"].string() == "tmpfs";
    tmp |= d == "/tmp";
    if (d == "/data") {
      data = true;
      CHECK(mt["type"].string() == "bind");
      CHECK(mt["source"].string() == "/var/data");
      auto opts = strs(mt["options"]);
      CHECK(std::find(opts.begin(), opts.end(), "ro") != opts.end());
      CHECK(std::find(opts.begin(), opts.end(), "rbind") != opts.end());
    }
  }
  CHECK(proc);
  CHECK(dev);
  CHECK(data);
  CHECK(tmp);  // a writable /tmp for a read-only root
}

TEST_CASE("config.json without limits has no resource limits, and no capabilities unless listed") {
  auto s = good();
  BundleOptions o;
  o.rootfsPath = "rootfs";
  auto doc = json::parse(renderConfigJson(s, o));
  REQUIRE(doc.ok());
  auto& r = (*doc)["linux"]["resources"];
  CHECK(r["memory"].isNull());
  CHECK(r["cpu"].isNull());
  CHECK(r["pids"].isNull());
  CHECK((*doc)["process"]["capabilities"]["bounding"].size() == 0);
  CHECK_FALSE((*doc)["root"]["readonly"].boolean());
  CHECK((*doc)["hostname"].string() == "web");
}

TEST_CASE("json escape and parse round-trip control characters") {
  json::Writer w;
  std::string tricky = std::string("a\"b\\c\n\t\x01", 8);
  w.beginObject().key("k").value(tricky).endObject();
  auto v = json::parse(w.str());
  REQUIRE(v.ok());
  CHECK((*v)["k"].string() == tricky);
  CHECK_FALSE(json::parse("{\"a\": }").ok());
  CHECK_FALSE(json::parse("[1, 2").ok());
}

TEST_CASE("restart backoff: 1 s doubling to a 60 s cap; policies") {
  std::vector<long> got;
  for (unsigned i = 0; i < 9; ++i) got.push_back(restartDelay(i).count());
  CHECK(got == std::vector<long>{1, 2, 4, 8, 16, 32, 60, 60, 60});
  CHECK(kBackoffReset == std::chrono::seconds(60));
  CHECK_FALSE(shouldRestart(v1::ContainerSpec::NEVER, false));
  CHECK(shouldRestart(v1::ContainerSpec::ON_FAILURE, false));
  CHECK_FALSE(shouldRestart(v1::ContainerSpec::ON_FAILURE, true));
  CHECK(shouldRestart(v1::ContainerSpec::ALWAYS, true));
}

TEST_CASE("specKey ignores only the desired state") {
  auto a = good(), b = good();
  b.set_stopped(true);
  CHECK(specKey(a) == specKey(b));
  b.set_memory_bytes(8u << 20);
  CHECK(specKey(a) != specKey(b));
}
