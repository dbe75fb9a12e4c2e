#include "outrider/common/openssl.hpp"

#include <openssl/err.h>

namespace outrider::ssl {

Error error(std::string what) {
  std::string detail;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  return Error{detail.empty() ? what : what + ": " + detail, 0};
}

Bio memBio(std::string_view data) { return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size()))); }

}  // namespace outrider::ssl
