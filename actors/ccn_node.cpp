#include <algorithm>

#include <caf/all.hpp>

#include "actors/ccn_node.hpp"
#include "messages/aleph_message.hpp"

namespace alephd {

namespace {

// Walks the STORE messages of `owner`, a page at a time, for the newest whose content.ref is
// `ref` (aleph's amends: PR #946 of aleph-vm); delivers it, or `best` when none is newer.
void newest_amend(ccn_node_actor::pointer self, const message_store_actor& messages,
                  const std::string& ref, const std::string& owner, uint32_t page,
                  std::shared_ptr<stored_message> best, caf::typed_response_promise<stored_message> rp) {
  message_query q;
  q.type = "STORE";
  q.addresses = {owner};
  q.page = page;
  q.per_page = 200;
  self->request(messages, std::chrono::seconds(10), atom::list_v, q)
    .then(
      [=](const message_page& p) mutable {
        for (auto& m : p.messages) {
          auto parsed = aleph::parse_message(m.json);
          auto* sc = parsed.msg ? std::get_if<aleph::store_content>(&parsed.msg->content) : nullptr;
          if (sc != nullptr && sc->ref && *sc->ref == ref && sc->address == owner
              && m.time > best->time)
            *best = m;
        }
        if (uint64_t{page} * q.per_page < p.total && !p.messages.empty())
          newest_amend(self, messages, ref, owner, page + 1, best, rp);
        else
          rp.deliver(*best);
      },
      [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
}

} // namespace

ccn_node_actor::behavior_type ccn_node(ccn_node_actor::pointer self, std::string ccn_id,
                                       crn_registry_actor registry, ccn_peer_actor peer,
                                       message_store_actor messages, content_store_actor files,
                                       scheduler_actor scheduler,
                                       std::shared_ptr<const http_locator> http,
                                       usage_book_actor usage) {
  return {
    [=](atom::hello) {
      return caf::make_result(registry, caf::actor_cast<caf::actor>(peer), ccn_id);
    },
    [=](atom::get, std::string& hash) {
      return self->delegate(messages, atom::get_v, std::move(hash));
    },
    [=](atom::get, std::string& ref, bool latest) -> caf::result<stored_message> {
      if (!latest)
        return self->delegate(messages, atom::get_v, std::move(ref));
      auto rp = self->make_response_promise<stored_message>();
      self->request(messages, std::chrono::seconds(10), atom::get_v, ref)
        .then(
          [=](stored_message& original) mutable {
            auto parsed = aleph::parse_message(original.json);
            auto* sc = parsed.msg ? std::get_if<aleph::store_content>(&parsed.msg->content) : nullptr;
            if (sc == nullptr) {
              rp.deliver(std::move(original));
              return;
            }
            auto best = std::make_shared<stored_message>(std::move(original));
            newest_amend(self, messages, ref, sc->address, 1, best, rp);
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
    [=](atom::read, std::string& hash) {
      return self->delegate(files, atom::read_v, std::move(hash));
    },
    [=](atom::locate, const std::string&) { return http ? http->get() : std::string{}; },
    [=](atom::exited, std::string& crn_id, execution_info& info) {
      if (scheduler)
        self->send(scheduler, atom::exited_v, std::move(crn_id), std::move(info));
    },
    [=](atom::list, const std::string& crn_id) -> caf::result<std::vector<placement>> {
      if (!scheduler)
        return std::vector<placement>{};
      auto rp = self->make_response_promise<std::vector<placement>>();
      self->request(scheduler, std::chrono::seconds(10), atom::list_v)
        .then(
          [=](const std::vector<placement>& all) mutable {
            std::vector<placement> mine;
            if (crn_id.empty()) {
              rp.deliver(all);
              return;
            }
            for (auto& p : all)
              if (p.crn_id == crn_id && (p.state == "allocating" || p.state == "allocated"))
                mine.push_back(p);
            rp.deliver(std::move(mine));
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
    [=](atom::usage, std::string& crn_id,
        std::vector<usage_entry>& entries) -> caf::result<uint64_t> {
      if (!usage || !registry)
        return make_error(ec::unavailable, "this CCN keeps no usage book");
      // Only a CRN registered here ships usage here. An empty batch only asks what is held (a
      // CRN that lost an answer of ours, now linked to another CCN, asks before it ships those
      // entries there); it takes the same path, so it is answered after earlier batches.
      bool query = entries.empty();
      auto rp = self->make_response_promise<uint64_t>();
      self->request(registry, std::chrono::seconds(10), atom::list_v)
        .then(
          [=](const std::vector<node_view>& nodes) mutable {
            auto known = std::any_of(nodes.begin(), nodes.end(), [&](const node_view& n) {
              return n.id == crn_id && n.status != "unlinked";
            });
            if (!known && !query) {
              rp.deliver(make_error(ec::refused, "CRN " + crn_id.substr(0, 80) + " is not registered here"));
              return;
            }
            self->request(usage, std::chrono::seconds(30), atom::usage_v, crn_id, entries)
              .then([=](uint64_t held) mutable { rp.deliver(held); },
                    [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
  };
}

} // namespace alephd
