// libFuzzer target: the provisioning bundle decoder and checks on arbitrary stick contents. Half of the
// inputs are signed with the trusted key first, so the fuzzer also reaches the field checks (broker URLs,
// CA certificate, manifest, operator keys) behind the signature.
#include <cstddef>
#include <cstdint>

#include "outrider/agent/provision_bundle.hpp"
#include "outrider/ctl/provision.hpp"

namespace {
struct World {
  outrider::crypto::SigningKey key = *outrider::crypto::SigningKey::generate();
};
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
      auto file = outrider::ctl::encodeBundleFile(b, w.key);
      if (auto v = prov::verifyBundle(file, w.key.publicKey()); v.ok()) (void)prov::checkBundleTime(*v, 0);
    }
  }
  return 0;
}
