#include <caf/all.hpp>

#include "actors/ccn_node.hpp"

namespace alephd {

ccn_node_actor::behavior_type ccn_node(ccn_node_actor::pointer self, std::string ccn_id,
                                       crn_registry_actor registry, ccn_peer_actor peer,
                                       message_store_actor messages, content_store_actor files,
                                       scheduler_actor scheduler,
                                       std::shared_ptr<const http_locator> http) {
  return {
    [=](atom::hello) {
      return caf::make_result(registry, caf::actor_cast<caf::actor>(peer), ccn_id);
    },
    [=](atom::get, std::string& hash) {
      return self->delegate(messages, atom::get_v, std::move(hash));
    },
    [=](atom::read, std::string& hash) {
      return self->delegate(files, atom::read_v, std::move(hash));
    },
    [=](atom::locate) { return http ? http->get() : std::string{}; },
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
            for (auto& p : all)
              if (p.crn_id == crn_id && (p.state == "allocating" || p.state == "allocated"))
                mine.push_back(p);
            rp.deliver(std::move(mine));
          },
          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
      return rp;
    },
  };
}

} // namespace alephd
