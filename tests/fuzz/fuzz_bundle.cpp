// libFuzzer target: the provisioning bundle decoder and checks on arbitrary stick contents. Half of the
// inputs are signed with the trusted key first, so the fuzzer also reaches the field checks (broker URLs,
// CA certificate, manifest, operator keys) behind the signature.
#include <cstddef>
#include <cstdint>

#include "outrider/agent/provision_bundle.hpp"

namespace {
struct World {
  outrider::crypto::SigningKey key = *outrider::crypto::SigningKey::generate();
};

// The stick's file as `outriderctl provision image` writes it (ctl/src/provision.cpp, encodeBundleFile):
// the signed part's 16 header bytes, the signature over header and payload, the payload.
std::string signBundle(const std::string& payload, const outrider::crypto::SigningKey& key) {
  std::string keyId;
  const auto& id = key.publicKey().id();
  for (std::size_t i = 0; i < 16; i += 2) keyId.push_back(static_cast<char>(std::stoi(id.substr(i, 2), nullptr, 16)));
  const std::string head = outrider::agent::provision::bundleSignedPart(keyId, "");
  const auto sig = key.sign(head + payload);
  return head + std::string(sig.begin(), sig.end()) + payload;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World w;
  namespace prov = outrider::agent::provision;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (auto v = prov::verifyBundle(in, w.key.publicKey()); v.ok()) {
    (void)prov::checkBundleTime(*v, 1'800'000'000'000);
    (void)v->record();
  }
  if (size > 0 && (data[0] & 1)) {
    // The rest as a bundle payload, signed: exercises decoding and every field check.
    outrider::v1::ProvisioningBundle b;
    if (b.ParseFromArray(data + 1, static_cast<int>(size - 1))) {
      auto file = signBundle(b.SerializeAsString(), w.key);
      if (auto v = prov::verifyBundle(file, w.key.publicKey()); v.ok()) (void)prov::checkBundleTime(*v, 0);
    }
  }
  return 0;
}
