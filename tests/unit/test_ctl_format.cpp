// Tables and JSON of node status, from NodeStatus values.
#include <doctest/doctest.h>

#include "outrider/ctl/format.hpp"

using namespace outrider;
using namespace outrider::ctl;

namespace {
constexpr std::int64_t kNow = 1'700'000'100'000;

v1::NodeStatus sampleStatus(bool online) {
  v1::NodeStatus s;
  s.set_node_id("n1");
  s.set_online(online);
  s.set_version("0.1.0");
  s.set_at_ms(kNow - 3'000);
  s.set_uptime_s(3 * 3600 + 12 * 60 + 5);
  s.set_broker("mqtts://hub-a:8883");
  s.set_hostname("edge-1");
  s.set_arch("arm64");
  s.set_manifest_version(4);
  s.set_wireguard_public_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=");
  auto add = [&](const char* name, v1::DaemonHealth::State st, const char* detail) {
    auto* d = s.add_daemons();
    d->set_name(name);
    d->set_state(st);
    d->set_version("0.1.0");
    d->set_detail(detail);
    d->set_uptime_s(65);
  };
  add("agent", v1::DaemonHealth::HEALTHY, "");
  add("vmm", v1::DaemonHealth::DEGRADED, "libvirt slow");
  add("netd", v1::DaemonHealth::UNREACHABLE, "connect: No such file or directory");
  return s;
}
}  // namespace

TEST_CASE("ages and durations") {
  CHECK(formatAge(kNow - 3'000, kNow) == "3s ago");
  CHECK(formatAge(kNow + 5'000, kNow) == "0s ago");  // node clock ahead
  CHECK(formatAge(kNow - 5 * 60'000, kNow) == "5m ago");
  CHECK(formatAge(kNow - 3 * 3'600'000, kNow) == "3h ago");
  CHECK(formatAge(kNow - 3 * 86'400'000LL, kNow) == "3d ago");
  CHECK(formatAge(0, kNow) == "-");
  CHECK(formatDuration(45) == "45s");
  CHECK(formatDuration(12 * 60 + 3) == "12m 3s");
  CHECK(formatDuration(3 * 3600 + 12 * 60 + 5) == "3h 12m");
  CHECK(formatDuration(2 * 86400 + 4 * 3600) == "2d 4h");
  CHECK(formatTimestamp(0) == "-");
  CHECK(formatTimestamp(1'700'000'000'000) == "2023-11-14T22:13:20Z");
}

TEST_CASE("a table aligns columns without trailing blanks") {
  CHECK(formatTable({{"A", "BB", "C"}, {"long", "x", "y"}}) == "A     BB  C\nlong  x   y\n");
  CHECK(formatTable({{"A", "B"}, {"1", ""}}) == "A  B\n1\n");
}

TEST_CASE("nodes table") {
  std::vector<NodeEntry> entries;
  entries.push_back({"n2", sampleStatus(false)});
  entries.push_back({"n1", sampleStatus(true)});
  entries.push_back({"n3", std::nullopt});
  std::string t = formatNodesTable(entries, kNow);
  CHECK(t ==
        "NODE  STATE    VERSION  BROKER              SEEN    DAEMONS\n"
        "n1    online   0.1.0    mqtts://hub-a:8883  3s ago  agent:ok vmm:degraded netd:down\n"
        "n2    offline  0.1.0    mqtts://hub-a:8883  3s ago  agent:ok vmm:degraded netd:down\n"
        "n3    invalid  -        -                   -       -\n");
}

TEST_CASE("an empty fleet prints the header only") {
  CHECK(formatNodesTable({}, kNow) == "NODE  STATE  VERSION  BROKER  SEEN  DAEMONS\n");
  CHECK(formatNodesJson({}) == "[]\n");
}

TEST_CASE("a node without daemons") {
  v1::NodeStatus s;
  s.set_online(true);
  std::string t = formatNodesTable({{"n1", s}}, kNow);
  CHECK(t.find("n1    online  -        -       -     -") != std::string::npos);
}

TEST_CASE("status detail view") {
  std::string t = formatStatus("n1", sampleStatus(true), kNow);
  CHECK(t ==
        "node:           n1\n"
        "state:          online\n"
        "version:        0.1.0\n"
        "hostname:       edge-1\n"
        "arch:           arm64\n"
        "uptime:         3h 12m\n"
        "broker:         mqtts://hub-a:8883\n"
        "manifest:       version 4\n"
        "wireguard key:  yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"
        "updated:        2023-11-14T22:14:57Z (3s ago)\n"
        "\n"
        "NAME   STATE        VERSION  UPTIME  DETAIL\n"
        "agent  healthy      0.1.0    1m 5s   -\n"
        "vmm    degraded     0.1.0    1m 5s   libvirt slow\n"
        "netd   unreachable  0.1.0    1m 5s   connect: No such file or directory\n");
}

TEST_CASE("status and nodes JSON") {
  auto s = sampleStatus(false);
  s.mutable_daemons(1)->set_detail("quote \" backslash \\ newline \n");
  std::string j = statusJson("n1", s);
  CHECK(j.rfind("{\"node\":\"n1\",\"state\":\"offline\",\"online\":false,\"version\":\"0.1.0\",\"hostname\":\"edge-1\","
                "\"arch\":\"arm64\",\"uptime_s\":11525,\"broker\":\"mqtts://hub-a:8883\",\"manifest_version\":4,"
                "\"wireguard_public_key\":\"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\",\"at_ms\":1700000097000,"
                "\"daemons\":[{\"name\":\"agent\",\"state\":\"healthy\"",
                0) == 0);
  CHECK(j.find("\"detail\":\"quote \\\" backslash \\\\ newline \\n\"") != std::string::npos);
  CHECK(j.back() == '}');
  std::string arr = formatNodesJson({{"b", s}, {"a", std::nullopt}});
  CHECK(arr.rfind("[{\"node\":\"a\",\"state\":\"invalid\"},{\"node\":\"b\",", 0) == 0);
  CHECK(arr.substr(arr.size() - 3) == "}]\n");
  CHECK(jsonQuote(std::string("\x01", 1)) == "\"\\u0001\"");
}
