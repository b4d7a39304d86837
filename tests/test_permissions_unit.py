"""The least-privilege model without a broker: its regexes match exactly the names the code
makes, and the audit tells narrow rights from broad ones."""

from __future__ import annotations

import re

import pytest

from orbit_mq.permissions import (
    BrokerUser,
    Rights,
    Role,
    TopicRights,
    audit,
    client_grant,
    endpoint_grant,
    pool_tag,
)
from orbit_mq.protocol import (
    ADMINS_OWNER,
    EVENTS_EXCHANGE,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    audit_key,
    discovery_queue,
    event_key,
    legacy_event_key,
    owned_pattern,
    owner_word,
    presence_key,
    private_subscription_queue,
    request_queue,
    subscription_queue,
)


def granted(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None


def test_an_endpoints_regexes_cover_its_own_names_and_no_one_elses() -> None:
    rights = endpoint_grant("hpc1").rights
    for own in (request_queue("hpc1", "psij"), discovery_queue("hpc1", 4242)):
        assert all(granted(regex, own) for regex in (rights.configure, rights.write, rights.read))
    for other in (
        request_queue("hpc10", "psij"),
        request_queue("hpc", "psij"),
        discovery_queue("hpc1x", 1),
        RPC_EXCHANGE,
        subscription_queue("hpc1", "watch"),
    ):
        assert not granted(rights.configure, other), other
    assert granted(rights.read, RPC_EXCHANGE) and not granted(rights.read, EVENTS_EXCHANGE)
    assert granted(rights.write, EVENTS_EXCHANGE) and not granted(rights.write, RPC_EXCHANGE)


def test_a_pool_member_may_serve_its_pools_request_queues_only() -> None:
    rights = endpoint_grant("hpc1-a", pool="hpc1").rights
    for own in (request_queue("hpc1-a", "psij"), request_queue("hpc1", "psij")):
        assert all(granted(regex, own) for regex in (rights.configure, rights.write, rights.read))
    for other in (request_queue("hpc2", "psij"), request_queue("hpc1-b", "psij")):
        assert not granted(rights.configure, other), other
    assert not granted(endpoint_grant("hpc1-a").rights.read, request_queue("hpc1", "psij"))
    member = BrokerUser("hpc1-a", (Role.ENDPOINT.tag, pool_tag("hpc1")))
    assert member.pool == "hpc1" and BrokerUser("x", (Role.ENDPOINT.tag,)).pool is None
    grant = endpoint_grant("hpc1-a", pool="hpc1")
    topics = {"hpc1-a": {topic.exchange: topic for topic in grant.topics}}
    report = audit("/", [member], {"hpc1-a": grant.rights}, topics)
    assert report.checked == ["hpc1-a"] and not report.findings


def test_an_endpoints_topic_rights_hold_it_to_its_name() -> None:
    topics = {topic.exchange: topic for topic in endpoint_grant("hpc1").topics}
    events, presence = topics[EVENTS_EXCHANGE].write, topics[TOPOLOGY_EXCHANGE].write
    for owner in ("alice", "bob.smith@site.org", "_x", "a*#"):
        assert granted(events, event_key("hpc1", "psij", "job_status", owner)), owner
        assert not granted(events, event_key("hpc10", "psij", "job_status", owner))
    assert granted(events, audit_key("hpc1")) and not granted(events, audit_key("hpc10"))
    assert granted(events, legacy_event_key("hpc1", "psij", "job_status"))
    assert not granted(events, "hpc1.psij.job_status.alice.extra")
    assert not granted(events, "hpc1.psij.job_status.a*")
    assert granted(presence, presence_key("hpc1", "heartbeat"))
    assert not granted(presence, presence_key("hpc2", "online"))
    assert not granted(presence, presence_key("hpc1", "anything"))


def test_a_clients_regexes_cover_its_subscriptions_only() -> None:
    rights = client_grant("alice").rights
    assert granted(rights.configure, subscription_queue("alice", "watch"))
    assert granted(rights.read, subscription_queue("alice", "watch"))
    for other in ("bob", "alicex", "alic"):
        assert not granted(rights.configure, subscription_queue(other, "watch")), other
        assert not granted(rights.read, subscription_queue(other, "watch")), other
    assert granted(rights.configure, private_subscription_queue("ab" * 16))
    assert not granted(rights.configure, request_queue("hpc1", "psij"))
    assert not granted(rights.read, request_queue("hpc1", "psij"))
    assert granted(rights.write, RPC_EXCHANGE) and not granted(rights.write, EVENTS_EXCHANGE)


def test_a_client_binds_only_keys_about_its_own_work() -> None:
    (events,) = client_grant("alice").topics
    assert events.exchange == EVENTS_EXCHANGE and events.write == "^$"
    for pattern in ("hpc1.psij.job_status", "*.*.*", "#", "hpc1.#", "#.job_status"):
        assert granted(events.read, owned_pattern(pattern, "alice")), pattern
        assert not granted(events.read, owned_pattern(pattern, "bob")), pattern
        assert not granted(events.read, owned_pattern(pattern, None)), pattern
    for key in ("#", "hpc1.#", "#.alice", "hpc1.psij.job_status", audit_key("hpc1")):
        assert not granted(events.read, key), key
    (everything,) = client_grant("root", all_events=True).topics
    assert granted(everything.read, "#") and granted(everything.read, audit_key("*"))


def test_owner_words_keep_keys_in_shape_and_users_apart() -> None:
    users = ["alice", "bob.smith@site.org", "a*b", "#", "_admins", "tmp", "x%2Ey", "x.y", "é"]
    words = [owner_word(user) for user in users]
    assert len(set(words)) == len(users)  # no two users share a word
    for word in words:
        assert "." not in word and word not in ("*", "#") and not word.startswith("_")
    assert owner_word("alice") == "alice" and owner_word("_admins") != ADMINS_OWNER
    assert owned_pattern("hpc1.#", "a.b") == "hpc1.*.*.a%2Eb"
    with pytest.raises(ValueError, match="at most three words"):
        owned_pattern("a.b.c.d", "alice")


def test_the_audit_passes_the_model_and_flags_what_is_broader() -> None:
    endpoint, client = endpoint_grant("hpc1"), client_grant("alice")
    users = [
        BrokerUser("hpc1", (Role.ENDPOINT.tag,)),
        BrokerUser("alice", (Role.CLIENT.tag,)),
        BrokerUser("root", ("administrator",)),
        BrokerUser("unanchored", ()),
        BrokerUser("nobody", ()),  # no rights on this vhost: not checked
    ]
    rights = {
        "hpc1": endpoint.rights,
        "alice": client.rights,
        "root": Rights(".*", ".*", ".*"),
        "unanchored": Rights("^orbit\\.sub\\.", "orbit\\.rpc", "orbit\\.events"),
    }
    topics = {
        "hpc1": {topic.exchange: topic for topic in endpoint.topics},
        "alice": {topic.exchange: topic for topic in client.topics},
    }
    report = audit("/", users, rights, topics)
    assert report.checked == ["alice", "hpc1", "unanchored"]
    assert report.administrators == ["root"]
    assert {finding.user for finding in report.too_broad} == {"unanchored"}

    loose = {"hpc1": {EVENTS_EXCHANGE: TopicRights(EVENTS_EXCHANGE, "^hpc1", "^$")}}
    flagged = audit("/", users[:1], {"hpc1": endpoint.rights}, loose).too_broad
    assert [finding.problem for finding in flagged] == [
        "may publish 'hpc1x.psij.job_status.hpc1' on orbit.events (another endpoint's events)",
        "may publish 'hpc1x.online' on orbit.topology (another endpoint's presence)",
    ]
