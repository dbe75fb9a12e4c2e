#pragma once
// C library handles become unique_ptrs the moment they are created, freed by the library's own function:
//   using Mosq = CHandle<mosquitto, mosquitto_destroy>;
#include <memory>

namespace outrider {

template <auto Free>
struct CFree {
  template <class T>
  void operator()(T* p) const noexcept {
    (void)Free(p);
  }
};
template <class T, auto Free>
using CHandle = std::unique_ptr<T, CFree<Free>>;

}  // namespace outrider
