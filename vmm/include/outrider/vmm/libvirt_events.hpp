#pragma once
// libvirt's event loop, run on a Boost.Asio io_context: file descriptor watches become
// posix::stream_descriptor waits, timeouts become steady_timers. libvirt's registration is
// process-wide, so this is too: call installLibvirtEventLoop before the first connection is opened.
// libvirt may add, update and remove watches from any thread (its calls run on vmm's worker thread);
// every change is posted to the io_context, and callbacks always run there.
#include <boost/asio/io_context.hpp>

namespace outrider::vmm {

/// Register the asio implementation with libvirt (once per process) and route watches and timeouts
/// created from now on to `io`. Loops run one after another in tests; each call moves future
/// registrations to the new loop.
void installLibvirtEventLoop(boost::asio::io_context& io);

/// Watches and timeouts currently registered (for tests: a closed connection leaves none behind).
std::size_t libvirtEventRegistrations();

}  // namespace outrider::vmm
