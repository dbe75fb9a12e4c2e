// libFuzzer target: the envelope decoder and verifier on arbitrary MQTT payloads. Half of the inputs
// are re-signed with the trusted key so the fuzzer also reaches the checks behind the signature.
#include <cstddef>
#include <cstdint>

#include "outrider/agent/verifier.hpp"

namespace {
struct FixedClock final : outrider::Clock {
  std::int64_t nowMs() const override { return 1'800'000'000'000; }
};
struct World {
  FixedClock clock;
  outrider::crypto::SigningKey key = *outrider::crypto::SigningKey::generate();
  outrider::agent::CommandVerifier verifier{
      "n1", {{key.publicKey().id(), key.publicKey()}}, outrider::agent::VerifierLimits{}, clock};
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World w;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto v = w.verifier.verify(in);
  if (v.accepted()) (void)w.verifier.checkTime(std::move(v));
  if (size > 0 && (data[0] & 1)) {
    // Treat the rest as a body and sign it: exercises body decoding, ids and the time window.
    outrider::v1::CommandEnvelope e;
    e.set_body(std::string(in.substr(1)));
    e.set_key_id(w.key.publicKey().id());
    e.set_signature(w.key.sign(e.body()));
    auto v2 = w.verifier.verify(e.SerializeAsString());
    if (v2.accepted()) (void)w.verifier.checkTime(std::move(v2));
  }
  return 0;
}
