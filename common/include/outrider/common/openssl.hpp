#pragma once
// What every OpenSSL user in the project needs: owned handles, one error message from the thread's
// error queue, and a read-only memory BIO.
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <string>
#include <string_view>

#include "outrider/common/c_handle.hpp"
#include "outrider/common/result.hpp"

namespace outrider::ssl {

using EvpPkey = CHandle<EVP_PKEY, EVP_PKEY_free>;
using EvpMdCtx = CHandle<EVP_MD_CTX, EVP_MD_CTX_free>;
using Bio = CHandle<BIO, BIO_free>;
using X509Req = CHandle<X509_REQ, X509_REQ_free>;
using X509Cert = CHandle<X509, X509_free>;

/// Drains the thread's OpenSSL error queue into one message ("WHAT: detail; detail"), so a failure never
/// leaks stale entries into the next, unrelated call on this thread.
Error error(std::string what);

/// A BIO reading `data`, which must outlive it.
Bio memBio(std::string_view data);

}  // namespace outrider::ssl
