// Every typed actor interface of alephd: the whole protocol on one screen.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/typed_actor.hpp>
#include <caf/replies_to.hpp>

#include "messages/types.hpp"

namespace alephd {

using caf::reacts_to;
using caf::replies_to;

/// Anything that wants to hear about newly stored messages.
using message_listener_actor = caf::typed_actor<
  /// A message was appended (locally or from a peer).
  reacts_to<atom::published, stored_message>>;

/// Anything that wants to hear about newly stored files.
using file_listener_actor = caf::typed_actor<
  /// A file was uploaded to this node (not one replicated from a peer).
  reacts_to<atom::stored, file_info>>;

/// How the message store answers an append sent without a request: an HTTP handler has no
/// actor to take the answer, and one spawned per message costs more than the commit. The
/// function is called once with the result or the error, by the store (on its thread); when
/// the append is dropped unanswered (the store is gone) it gets ec::unavailable, on whichever
/// thread drops it last. It must not throw.
class append_reply {
public:
  using function = std::function<void(const append_result*, const caf::error*)>;
  append_reply() = default;
  explicit append_reply(function f);
  /// Whether this carries a function (a default-made one does not).
  explicit operator bool() const { return static_cast<bool>(state_); }
  void deliver(const append_result& r) const;
  void deliver(const caf::error& e) const;

private:
  struct state;
  std::shared_ptr<state> state_;
};

/// CCN: the durable message log (LMDB, group commit).
using message_store_actor = caf::typed_actor<
  /// Appends a message; answers once it is durable. A known hash is a duplicate, not an error.
  replies_to<atom::append, stored_message>::with<append_result>,
  /// The same, answered through the reply's function instead of a response.
  reacts_to<atom::append, stored_message, append_reply>,
  /// One message by item_hash; ec::not_found when unknown.
  replies_to<atom::get, std::string>::with<stored_message>,
  /// A page of messages, newest first, filtered by type and senders.
  replies_to<atom::list, message_query>::with<message_page>,
  /// Every item_hash held, for anti-entropy between CCN peers.
  replies_to<atom::inventory>::with<std::vector<std::string>>,
  /// Adds a listener for new messages.
  reacts_to<atom::subscribe, message_listener_actor>,
  /// Internal: commit the pending appends as one transaction (if the round still matches), or
  /// count the writers after a commit; the second value says which (see message_store.cpp).
  reacts_to<atom::flush, uint64_t, uint64_t>>;

} // namespace alephd

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(alephd::append_reply)

namespace alephd {

/// CRN: its link to a CCN, as the CCN sees it.
using ccn_link_actor = caf::typed_actor<
  /// The CCN changed this CRN's state (promotion to linked, demotion).
  reacts_to<atom::status, link_state>,
  /// An allocation from the CCN's scheduler, passed to the job_broker.
  replies_to<atom::allocate, allocation>::with<allocation_ack>,
  /// The link's state for HTTP and metrics.
  replies_to<atom::get>::with<link_info>,
  /// A message from the CCN's log (the code and volumes of a workload); ec::unavailable while
  /// the link is down.
  replies_to<atom::get, std::string>::with<stored_message>,
  /// The STORE message a ref names or, with `true` (use_latest), the newest STORE by the same
  /// owner that amends it (content.ref = ref) when there is one.
  replies_to<atom::get, std::string, bool>::with<stored_message>,
  /// A file's bytes from the CCN's content store; ec::unavailable while the link is down.
  replies_to<atom::read, std::string>::with<file_blob>,
  /// The HTTP base URL ("http://host:port") of the linked CCN, to download a file (its hash)
  /// from; ec::unavailable while the link is down.
  replies_to<atom::locate, std::string>::with<std::string>,
  /// The CCN asks this CRN to hold a replica of a file (storage duty): fetched, and kept until
  /// dropped; answers once it is held.
  replies_to<atom::replicate, std::string>::with<file_info>,
  /// The CCN drops a file (FORGET): its duty ends and it is deleted once no execution pins it.
  reacts_to<atom::remove, std::string>,
  /// The CCN's full list of the replicas this CRN holds (sent when it links): other duties end.
  reacts_to<atom::confirm, std::vector<std::string>>,
  /// A message-triggered program (its item_hash) to run on this CRN with a message as its
  /// event; answers the program's HTTP status (2xx = handled), or an error.
  replies_to<atom::run, std::string, stored_message>::with<uint16_t>,
  /// A persistent workload of this CRN failed for good (crash loop): tell the CCN.
  reacts_to<atom::exited, execution_info>,
  /// Internal: heartbeat and reconnect timer.
  reacts_to<atom::tick>,
  /// Internal: try the next CCN endpoint.
  reacts_to<atom::connect>>;

/// Where a content store fetches files it lacks: a CRN's link to its CCN, or a CCN's
/// replicator (its CRNs holding replicas). `locate` names an HTTP base URL that serves
/// /api/v0/storage/raw/{hash} (empty: none), `read` the bytes over CAF as a fallback.
using file_source_actor = caf::typed_actor<
  replies_to<atom::locate, std::string>::with<std::string>,
  replies_to<atom::read, std::string>::with<file_blob>>;

/// One shard of a node's content-addressed files: the blobs whose hash falls in it, their LMDB
/// index (size, last access, origin, kept), pins, single-flight downloads and scrubbing.
using cache_shard_actor = caf::typed_actor<
  /// Stores bytes that hash to the given sha256, from an origin ("upload": announced to the
  /// store's listeners; "peer": a replica).
  replies_to<atom::put, std::string, std::string, std::string>::with<file_info>,
  /// Stores a file from disk whose sha256 is known (moved into place when it is a whole temp
  /// file of the store, else copied).
  replies_to<atom::put, file_source>::with<file_info>,
  /// Copies a file (or a range of it) into a temp file of the store and hashes it; the answer
  /// names the temp file and its sha256, to be `put` to the shard that owns the hash.
  replies_to<atom::prepare, file_source>::with<file_source>,
  /// A held file, verified (an altered blob is deleted: not_found).
  replies_to<atom::get, std::string>::with<file_info>,
  /// A held file, else downloaded (one download however many ask); pinned for the owner (a
  /// non-empty string) until `unpin`. Progress goes to the optional actor as
  /// (atom::progress, hash, bytes, total).
  replies_to<atom::fetch, std::string, std::string, caf::actor>::with<file_info>,
  /// A held file, else downloaded from the node at this HTTP base URL (a peer CCN's offer).
  replies_to<atom::fetch, std::string, std::string>::with<file_info>,
  /// Releases every pin of an owner.
  reacts_to<atom::unpin, std::string>,
  /// The replicas this node must hold (its CCN's list): any other storage duty ends.
  reacts_to<atom::confirm, std::vector<std::string>>,
  /// Deletes a file unless pinned (then it goes when the last pin does); true when held.
  replies_to<atom::remove, std::string>::with<bool>,
  /// Deletes these evictable files (those still unpinned).
  replies_to<atom::evict, std::vector<std::string>>::with<uint64_t>,
  /// The oldest evictable files, up to this many bytes.
  replies_to<atom::evict, uint64_t>::with<std::vector<evict_candidate>>,
  /// A file's bytes (small files, for peers).
  replies_to<atom::read, std::string>::with<file_blob>,
  replies_to<atom::inventory>::with<std::vector<std::string>>,
  replies_to<atom::usage>::with<cache_usage>,
  /// Internal: a download ended (hash, temp file, error, ec of the error).
  reacts_to<atom::fetched, std::string, std::string, std::string, uint8_t>,
  /// Internal: a download's progress (hash, bytes, total).
  reacts_to<atom::progress, std::string, uint64_t, uint64_t>,
  /// Where missing files come from (a CRN's link to its CCN, a CCN's replicator).
  reacts_to<atom::connect, file_source_actor>,
  /// Internal: verify the next blobs; persist last-access times.
  reacts_to<atom::scrub>,
  reacts_to<atom::tick>>;

/// A node's content store (CRN cache, CCN origin): routes each file to its cache shard by hash,
/// adds up usage, runs eviction, and tells listeners about new files.
using content_store_actor = caf::typed_actor<
  /// Stores bytes; answers after blob and index entry are durable.
  replies_to<atom::put, std::string>::with<file_info>,
  /// Stores bytes that must hash to the given sha256 (replication); ec::invalid otherwise.
  replies_to<atom::put, file_blob>::with<file_info>,
  /// Stores a file from disk (a spooled upload or a byte range of it).
  replies_to<atom::put, file_source>::with<file_info>,
  /// Where a file is; ec::not_found when unknown.
  replies_to<atom::get, std::string>::with<file_info>,
  /// A file, downloaded when missing, pinned for the owner (see cache_shard_actor).
  replies_to<atom::fetch, std::string, std::string, caf::actor>::with<file_info>,
  /// A file, else downloaded from the node at this HTTP base URL.
  replies_to<atom::fetch, std::string, std::string>::with<file_info>,
  /// Releases every pin of an owner.
  reacts_to<atom::unpin, std::string>,
  /// The replicas this node must hold (its CCN's list): any other storage duty ends.
  reacts_to<atom::confirm, std::vector<std::string>>,
  /// Deletes a file (FORGET) once no execution pins it.
  replies_to<atom::remove, std::string>::with<bool>,
  /// A file's bytes, for a peer.
  replies_to<atom::read, std::string>::with<file_blob>,
  /// Every hash held.
  replies_to<atom::inventory>::with<std::vector<std::string>>,
  /// Bytes, files and pins over all shards.
  replies_to<atom::usage>::with<cache_usage>,
  /// Adds a listener for new files.
  reacts_to<atom::subscribe, file_listener_actor>,
  /// Internal: a shard stored a new file (announced to listeners when `announce`).
  reacts_to<atom::stored, file_info, bool>,
  /// Where missing files come from (a CRN's link to its CCN, a CCN's replicator).
  reacts_to<atom::connect, file_source_actor>,
  /// Internal: a shard passed the high watermark.
  reacts_to<atom::evict>>;

/// Anything that wants to hear when a CRN's state changes at the CCN.
using node_listener_actor = caf::typed_actor<
  /// A CRN changed state; the handle reaches its ccn_link.
  reacts_to<atom::node, crn_info, link_state, ccn_link_actor>>;

/// CCN: the CRN registry (links, the limit, heartbeats, failure detection).
using crn_registry_actor = caf::typed_actor<
  /// A CRN registers or re-registers, signed with its node key; answers its state (linked or
  /// waiting), or ec::refused when its identity does not verify or its id is linked elsewhere.
  replies_to<atom::enroll, enrollment, ccn_link_actor>::with<registration>,
  /// A CRN's heartbeat; answers with the CCN's view of it.
  replies_to<atom::beat, heartbeat>::with<heartbeat_ack>,
  /// A CRN leaves on purpose; the longest-waiting CRN takes its slot.
  reacts_to<atom::unlink, std::string>,
  /// The corechannel view of every known CRN.
  replies_to<atom::list>::with<std::vector<node_view>>,
  /// Adds a listener for CRN state changes (it first gets every known CRN).
  reacts_to<atom::subscribe, node_listener_actor>,
  /// Internal: failure detection.
  reacts_to<atom::tick>>;

/// CCN: places persistent workloads on linked CRNs.
using scheduler_actor = caf::typed_actor<
  /// A new message; PROGRAM (persistent) and INSTANCE messages accepted here get placed.
  reacts_to<atom::published, stored_message>,
  /// A CRN changed state: re-place its workloads when down, retry pending ones when linked.
  reacts_to<atom::node, crn_info, link_state, ccn_link_actor>,
  /// Where every workload is.
  replies_to<atom::list>::with<std::vector<placement>>,
  /// A CRN reports that a workload placed on it failed for good (crash loop): it is marked
  /// `failed` and not placed again.
  reacts_to<atom::exited, std::string, execution_info>,
  /// Internal: retry pending placements.
  reacts_to<atom::tick>>;

/// CCN: keeps the replicas of stored files on its CRNs (STORE asks for `replicas`, default
/// `ccn.replicas`), restores their count when a CRN holding one goes down, and drops a file
/// everywhere on FORGET. It is also the CCN content store's source for files it lacks.
using replicator_actor = caf::typed_actor<
  /// A new message: STORE records a file, FORGET drops it.
  reacts_to<atom::published, stored_message>,
  /// A CRN changed state: down ones lose their replicas, linked ones get new ones.
  reacts_to<atom::node, crn_info, link_state, ccn_link_actor>,
  /// Where the replicas are: file hash -> CRN ids holding it.
  replies_to<atom::list>::with<std::map<std::string, std::vector<std::string>>>,
  /// The HTTP address of a linked CRN holding the file; ec::not_found when none does.
  replies_to<atom::locate, std::string>::with<std::string>,
  /// Always ec::not_found: replicas are fetched over HTTP (file_source_actor).
  replies_to<atom::read, std::string>::with<file_blob>,
  /// Internal: retry placements.
  reacts_to<atom::tick>>;

/// CCN: message-triggered programs. Keeps the `on.message` subscriptions of PROGRAM messages
/// durably (LMDB) and, for each new message that matches one, runs the program on a linked CRN
/// with the message as its event (at least once: another CRN is tried on failure).
using trigger_router_actor = caf::typed_actor<
  /// A new message: a PROGRAM with on.message subscribes; any message may trigger programs.
  reacts_to<atom::published, stored_message>,
  /// A CRN changed state; linked CRNs run triggered programs.
  reacts_to<atom::node, crn_info, link_state, ccn_link_actor>,
  /// The subscribed programs (item hashes), for tests and the API.
  replies_to<atom::list>::with<std::vector<std::string>>,
  /// Internal: retry dispatches that failed.
  reacts_to<atom::tick>>;

/// CCN: replication of messages and files with peer CCNs.
using ccn_peer_actor = caf::typed_actor<
  /// A local message to forward to every peer.
  reacts_to<atom::published, stored_message>,
  /// A local file to forward to every peer.
  reacts_to<atom::stored, file_info>,
  /// A peer introduces itself (its ccn_peer as a plain handle); answers with our inventory,
  /// and each side then pushes what the other lacks.
  replies_to<atom::hello, std::string, caf::actor>::with<peer_inventory>,
  /// A message or file pushed by a peer.
  reacts_to<atom::replicate, stored_message>,
  reacts_to<atom::replicate, file_blob>,
  /// A large file a peer offers (hash, its HTTP base URL): fetched from there, streamed.
  reacts_to<atom::replicate, std::string, std::string>,
  /// Known peer CCNs, for the corechannel view.
  replies_to<atom::list>::with<std::vector<node_view>>,
  /// Internal: (re)connect to configured peers.
  reacts_to<atom::tick>>;

/// CRN: the reward ledger (actors/reward_ledger.hpp): metering samples, hash-chained on disk.
using reward_ledger_actor = caf::typed_actor<
  /// A metering sample of one execution; numbered and chained at the next group commit.
  reacts_to<atom::sample, usage_entry>,
  /// Up to `max` committed entries the CCN has not acknowledged yet, oldest first.
  replies_to<atom::get, uint32_t>::with<std::vector<usage_entry>>,
  /// Up to `max` committed entries after seq `after` (for /about/executions/records).
  replies_to<atom::list, uint64_t, uint32_t>::with<std::vector<usage_entry>>,
  /// The CCN holds every entry up to this seq.
  reacts_to<atom::confirm, uint64_t>,
  /// The last committed seq and the last acknowledged one.
  replies_to<atom::status>::with<uint64_t, uint64_t>,
  /// Internal: commit the samples waiting.
  reacts_to<atom::flush>>;

/// CCN: the metering entries of its CRNs (actors/usage_book.hpp), kept once per (node, seq).
using usage_book_actor = caf::typed_actor<
  /// Entries from CRN `id`, in seq order; answers the highest seq held for it. Entries
  /// already held are skipped; a gap or a broken chain stops the batch there.
  replies_to<atom::usage, std::string, std::vector<usage_entry>>::with<uint64_t>,
  /// Up to `max` entries of CRN `id` after seq `after`.
  replies_to<atom::list, std::string, uint64_t, uint32_t>::with<std::vector<usage_entry>>,
  /// Every CRN with entries and its highest seq.
  replies_to<atom::status>::with<std::map<std::string, uint64_t>>>;

/// CCN: probes its CRNs and scores them (actors/prober.hpp).
using prober_actor = caf::typed_actor<
  /// A CRN's link changed (from the crn_registry): linked and down ones are probed.
  reacts_to<atom::node, crn_info, link_state, ccn_link_actor>,
  /// The score of every CRN probed, over the scoring window.
  replies_to<atom::list>::with<std::vector<node_score>>,
  /// Internal: a probe's result (CRN id, encoded probe); the round's end.
  reacts_to<atom::probe, std::string, std::string>,
  reacts_to<atom::probe>,
  /// Internal: the probe timer.
  reacts_to<atom::tick>>;


/// CCN: computes and keeps the reward epochs (actors/reward_epochs.hpp).
using reward_epochs_actor = caf::typed_actor<
  /// The stored epoch `n` as JSON (inputs and both models); 0 = the latest. ec::not_found.
  replies_to<atom::rewards, uint64_t>::with<std::string>,
  /// Internal: look whether an epoch ended.
  reacts_to<atom::tick>>;


/// CCN: the actor published on the node port; CRNs and peers start here.
using ccn_node_actor = caf::typed_actor<
  /// Answers the registry, the peer endpoint (as a plain handle) and the CCN's id.
  replies_to<atom::hello>::with<crn_registry_actor, caf::actor, std::string>,
  /// One message of the log, for a CRN preparing a workload; ec::not_found when unknown.
  replies_to<atom::get, std::string>::with<stored_message>,
  /// A STORE ref resolved as for use_latest (see ccn_link_actor).
  replies_to<atom::get, std::string, bool>::with<stored_message>,
  /// A file's bytes, for a CRN preparing a workload; ec::not_found when unknown.
  replies_to<atom::read, std::string>::with<file_blob>,
  /// The CCN's HTTP base URL ("http://host:port"; empty while unknown), for a file (its hash).
  replies_to<atom::locate, std::string>::with<std::string>,
  /// A CRN (its id) reports a workload that failed for good; passed to the scheduler.
  reacts_to<atom::exited, std::string, execution_info>,
  /// The workloads the scheduler places on CRN `id` now (a restarted CRN keeps the executions
  /// it re-adopted only if they are among them); with an empty id, every workload it places,
  /// wherever and in whatever state (a CRN linked elsewhere asks what became of its copies).
  replies_to<atom::list, std::string>::with<std::vector<placement>>,
  /// Metering entries from CRN `id` (registered here, else ec::refused) for the usage book;
  /// answers the highest seq held for it.
  replies_to<atom::usage, std::string, std::vector<usage_entry>>::with<uint64_t>>;

/// CRN: one execution's life (phases preparing → booting → running → stopping → stopped/failed).
using vm_supervisor_actor = caf::typed_actor<
  /// The execution as it is now.
  replies_to<atom::get>::with<execution_info>,
  /// A newer allocation of the same workload (higher epoch).
  replies_to<atom::allocate, allocation>::with<execution_info>,
  /// Answers once the execution runs (at once if it does); an error if it cannot start.
  replies_to<atom::run>::with<execution_info>,
  /// Stops the execution; answers once it is stopped. Safe in any phase.
  replies_to<atom::stop>::with<execution_info>,
  /// Stops and starts it again (persistent workloads); answers once it runs.
  replies_to<atom::reboot>::with<execution_info>,
  /// Stops it and deletes its persistent volumes; answers once done.
  replies_to<atom::erase>::with<execution_info>,
  /// Its output so far (kept after it stopped).
  replies_to<atom::logs>::with<std::vector<log_line>>,
  /// The CRN stops but leaves persistent workloads running: a sandbox that can outlive the CRN
  /// is let go (a restarted CRN re-adopts it), anything else is stopped. Answers the final state.
  replies_to<atom::drain>::with<execution_info>,
  /// A download for it made progress (file hash, bytes, total or 0): shown in its status.
  reacts_to<atom::progress, std::string, uint64_t, uint64_t>,
  /// Internal: restart after back-off (if the run counter still matches).
  reacts_to<atom::started, uint64_t, std::string>,
  /// Internal: the guest ended on its own (exit code or -1, why).
  reacts_to<atom::exited, uint64_t, int32_t, std::string>,
  /// Internal: idle and restart timer.
  reacts_to<atom::tick>>;

/// CRN: admission, the table of executions, one vm_supervisor each.
using job_broker_actor = caf::typed_actor<
  /// Admits an allocation and starts its vm_supervisor; refusal is an ack with a reason.
  replies_to<atom::allocate, allocation>::with<allocation_ack>,
  /// An on-demand call for a program (its item_hash): answers once an execution of it runs,
  /// starting one when needed (concurrent calls share one start). Errors: ec::not_found
  /// (unknown program), ec::invalid (not a program to run on demand), ec::no_capacity,
  /// ec::unavailable (no CCN to fetch it from, or draining), ec::workload_failed (it failed to
  /// start).
  replies_to<atom::run, std::string>::with<execution_info>,
  /// Every known execution.
  replies_to<atom::list>::with<std::vector<execution_info>>,
  /// Stops one execution; ec::not_found when unknown.
  replies_to<atom::stop, std::string>::with<execution_info>,
  /// Restarts one execution; ec::not_found when unknown.
  replies_to<atom::reboot, std::string>::with<execution_info>,
  /// Stops one execution and deletes its volumes; ec::not_found when unknown.
  replies_to<atom::erase, std::string>::with<execution_info>,
  /// One execution's output; ec::not_found when unknown.
  replies_to<atom::logs, std::string>::with<std::vector<log_line>>,
  /// A message-triggered program: runs it on demand and passes the message to it as an event
  /// (`POST /aleph/event` with the message JSON); answers the program's HTTP status.
  replies_to<atom::run, std::string, stored_message>::with<uint16_t>,
  /// Refuses new calls from now on and stops the executions (persistent ones only when `bool`
  /// is true); answers the number stopped once they are.
  replies_to<atom::drain, bool>::with<uint32_t>,
  /// The link to fetch programs and code through (set once the link exists).
  reacts_to<atom::connect, ccn_link_actor>,
  /// After (re)registration with CCN `std::string` (its id): what it places on this CRN. Its
  /// executions here that it no longer places here (it moved them while this CRN was gone or
  /// linked elsewhere), and executions re-adopted after a restart that it does not place here,
  /// are stopped. Executions other CCNs placed are left alone.
  reacts_to<atom::confirm, std::string, std::vector<placement>>,
  /// Internal: the program's answer to event `uint64_t` arrived (from an executor thread).
  reacts_to<atom::published, uint64_t, uint16_t>,
  /// Internal: a supervisor's final state and logs, sent just before it quits.
  reacts_to<atom::exited, execution_info, std::vector<log_line>>>;

} // namespace alephd

namespace caf {
class actor_system_config;
} // namespace caf

namespace alephd {

/// Adds every alephd message type and actor handle to a config (before the actor system starts).
void add_message_types(caf::actor_system_config& cfg);

/// Is `err` the alephd error `code`?
bool is(const caf::error& err, ec code);

} // namespace alephd
