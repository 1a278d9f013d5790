// A workaround for CAF 0.17.6's OpenSSL module, linked into the alephd executable.
//
// OpenSSL requires the thread's error queue to be empty before an SSL I/O call, since
// SSL_get_error() reads it to classify a failure. CAF's sessions never clear it
// (libcaf_openssl/src/session.cpp, handle_ssl_result): a handshake that fails on one
// connection (a node without a certificate of our CA) leaves errors in the queue of the one
// multiplexer thread, and the next SSL_read of any other, healthy link then looks failed and
// CAF closes it. An unauthenticated client knocking on the node port could cut every TLS link.
//
// These definitions take the place of OpenSSL's for CAF (the executable's symbols come first
// in the dynamic lookup) and start each call with an empty queue.
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

template <class Fn>
Fn next(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static const auto real = next<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static const auto real = next<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_accept(SSL* ssl) {
  static const auto real = next<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return real(ssl);
}

int SSL_connect(SSL* ssl) {
  static const auto real = next<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return real(ssl);
}

} // extern "C"
