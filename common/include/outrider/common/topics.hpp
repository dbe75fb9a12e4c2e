#pragma once
// MQTT topic names of the hub <-> node contract (docs/protocol.md).
#include <string>
#include <string_view>

namespace outrider::topics {

inline std::string node(std::string_view nodeId, std::string_view leaf) {
  std::string t = "outrider/v1/nodes/";
  t += nodeId;
  t += '/';
  t += leaf;
  return t;
}
inline std::string cmd(std::string_view n) { return node(n, "cmd"); }
inline std::string reply(std::string_view n) { return node(n, "reply"); }
inline std::string status(std::string_view n) { return node(n, "status"); }
inline std::string telemetry(std::string_view n) { return node(n, "telemetry"); }
inline std::string events(std::string_view n) { return node(n, "events"); }
inline constexpr std::string_view kAllStatus = "outrider/v1/nodes/+/status";

/// Node ids: 1..64 chars of [A-Za-z0-9._-], not starting with '.', so they are safe in topics and paths.
bool validNodeId(std::string_view id);
/// Command ids: 1..128 characters of [A-Za-z0-9._:-].
bool validCommandId(std::string_view id);

}  // namespace outrider::topics
