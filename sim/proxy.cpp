#include "sim/proxy.hpp"

#include <array>
#include <atomic>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace alephd::sim {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

struct proxy;

// One proxied connection: the node that connected and the node it is for.
struct session : std::enable_shared_from_this<session> {
  session(asio::io_context& io, proxy& p) : down(io), up(io), owner(p) {
  }
  tcp::socket down; ///< accepted
  tcp::socket up;   ///< to the target
  proxy& owner;
  bool held = false; ///< caught by a partition: moves no more bytes, closed when it heals

  void close() {
    error_code ec;
    down.close(ec);
    up.close(ec);
  }
};

struct proxy {
  proxy(asio::io_context& io, uint16_t target) : acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0)), target(target) {
  }
  tcp::acceptor acceptor;
  uint16_t target;
  bool cut = false;
  std::chrono::milliseconds delay{0};
  std::list<std::weak_ptr<session>> sessions;
};

// Relays from `from` to `to` of one session, one chunk at a time (so a delay keeps the order).
struct pump : std::enable_shared_from_this<pump> {
  pump(std::shared_ptr<session> s, tcp::socket& from, tcp::socket& to)
    : s(std::move(s)), from(from), to(to), timer(from.get_executor()) {
  }
  std::shared_ptr<session> s;
  tcp::socket& from;
  tcp::socket& to;
  asio::steady_timer timer;
  std::array<char, 16384> buf{};

  void read() {
    if (s->held)
      return; // a partition: nothing moves; the heal closes the session
    from.async_read_some(asio::buffer(buf), [self = shared_from_this()](error_code ec, std::size_t n) {
      if (ec)
        return self->s->close();
      if (self->s->held)
        return; // the partition ate these bytes
      if (self->s->owner.delay.count() > 0) {
        self->timer.expires_after(self->s->owner.delay);
        self->timer.async_wait([self, n](error_code) { self->write(n); });
      } else {
        self->write(n);
      }
    });
  }

  void write(std::size_t n) {
    if (s->held)
      return;
    asio::async_write(to, asio::buffer(buf.data(), n), [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec)
        return self->s->close();
      self->read();
    });
  }
};

} // namespace

struct link_proxies::impl {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  std::vector<std::unique_ptr<proxy>> proxies; // only grows; guarded by `mu` for add/port
  mutable std::mutex mu;
  std::atomic<uint64_t> accepted{0};
  std::thread thread;

  // A proxy by id (they live as long as this object; the list only grows).
  proxy* find(std::size_t id) {
    std::lock_guard<std::mutex> lock{mu};
    return proxies.at(id).get();
  }

  void accept(proxy& p) {
    p.acceptor.async_accept([this, &p](error_code ec, tcp::socket sock) {
      if (ec == asio::error::operation_aborted)
        return;
      if (!ec) {
        start(p, std::move(sock));
        return accept(p);
      }
      // Out of descriptors or the like: try again a little later instead of spinning.
      auto t = std::make_shared<asio::steady_timer>(io, std::chrono::milliseconds(100));
      t->async_wait([this, &p, t](error_code e) {
        if (!e && p.acceptor.is_open())
          accept(p);
      });
    });
  }

  void start(proxy& p, tcp::socket sock) {
    ++accepted;
    auto s = std::make_shared<session>(io, p);
    s->down = std::move(sock);
    p.sessions.remove_if([](auto& w) { return w.expired(); });
    p.sessions.push_back(s);
    if (p.cut) {
      s->held = true; // accepted and held, as a black hole would
      held_.push_back(s);
      return;
    }
    s->up.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), p.target), [s](error_code ec) {
      if (ec || s->held)
        return s->close();
      std::make_shared<pump>(s, s->down, s->up)->read();
      std::make_shared<pump>(s, s->up, s->down)->read();
    });
  }

  // Held sessions are kept alive here until their partition heals.
  std::vector<std::shared_ptr<session>> held_;
};

link_proxies::link_proxies() : impl_(std::make_unique<impl>()) {
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

link_proxies::~link_proxies() {
  asio::post(impl_->io, [this] {
    for (auto& p : impl_->proxies) {
      error_code ec;
      p->acceptor.close(ec);
      for (auto& w : p->sessions)
        if (auto s = w.lock())
          s->close();
    }
    impl_->held_.clear();
    impl_->work.reset();
  });
  impl_->thread.join();
}

std::size_t link_proxies::add(uint16_t target_port) {
  std::lock_guard<std::mutex> lock{impl_->mu};
  impl_->proxies.push_back(std::make_unique<proxy>(impl_->io, target_port));
  auto* p = impl_->proxies.back().get();
  asio::post(impl_->io, [this, p] { impl_->accept(*p); });
  return impl_->proxies.size() - 1;
}

uint16_t link_proxies::port(std::size_t id) const {
  std::lock_guard<std::mutex> lock{impl_->mu};
  return impl_->proxies.at(id)->acceptor.local_endpoint().port();
}

void link_proxies::retarget(std::size_t id, uint16_t target_port) {
  proxy* p = impl_->find(id);
  // Connections made to the old port (something else listens there) end too.
  asio::post(impl_->io, [this, p, target_port] {
    p->target = target_port;
    for (auto& w : p->sessions)
      if (auto s = w.lock())
        s->close();
    std::erase_if(impl_->held_, [p](auto& s) { return &s->owner == p; });
  });
}

void link_proxies::partition(std::size_t id, bool on) {
  proxy* p = impl_->find(id);
  asio::post(impl_->io, [this, p, on] {
    p->cut = on;
    p->sessions.remove_if([](auto& w) { return w.expired(); });
    for (auto& w : p->sessions) {
      auto s = w.lock();
      if (!s)
        continue;
      if (on) {
        s->held = true;
        impl_->held_.push_back(s);
      } else if (s->held) {
        s->close();
      }
    }
    if (!on)
      std::erase_if(impl_->held_, [p](auto& s) { return &s->owner == p; });
  });
}

void link_proxies::delay(std::size_t id, std::chrono::milliseconds d) {
  proxy* p = impl_->find(id);
  asio::post(impl_->io, [p, d] { p->delay = d; });
}

uint64_t link_proxies::connections() const {
  return impl_->accepted.load();
}

} // namespace alephd::sim
