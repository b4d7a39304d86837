"""The least-privilege model without a broker: its regexes match exactly the names the code
makes, and the audit tells narrow rights from broad ones."""

from __future__ import annotations

import re

from orbit_mq.permissions import (
    BrokerUser,
    Rights,
    Role,
    TopicRights,
    audit,
    client_grant,
    endpoint_grant,
)
from orbit_mq.protocol import (
    EVENTS_EXCHANGE,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    discovery_queue,
    event_key,
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
        subscription_queue("watch"),
    ):
        assert not granted(rights.configure, other), other
    assert granted(rights.read, RPC_EXCHANGE) and not granted(rights.read, EVENTS_EXCHANGE)
    assert granted(rights.write, EVENTS_EXCHANGE) and not granted(rights.write, RPC_EXCHANGE)


def test_an_endpoints_topic_rights_hold_it_to_its_name() -> None:
    topics = {topic.exchange: topic for topic in endpoint_grant("hpc1").topics}
    events, presence = topics[EVENTS_EXCHANGE].write, topics[TOPOLOGY_EXCHANGE].write
    assert granted(events, event_key("hpc1", "psij", "job_status"))
    assert not granted(events, event_key("hpc10", "psij", "job_status"))
    assert not granted(events, "hpc1.psij.job_status.extra")
    assert granted(presence, presence_key("hpc1", "heartbeat"))
    assert not granted(presence, presence_key("hpc2", "online"))
    assert not granted(presence, presence_key("hpc1", "anything"))


def test_a_clients_regexes_cover_its_subscriptions_only() -> None:
    rights = client_grant("alice").rights
    assert granted(rights.configure, subscription_queue("watch"))
    assert granted(rights.configure, private_subscription_queue("ab" * 16))
    assert not granted(rights.configure, request_queue("hpc1", "psij"))
    assert not granted(rights.read, request_queue("hpc1", "psij"))
    assert granted(rights.write, RPC_EXCHANGE) and not granted(rights.write, EVENTS_EXCHANGE)


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
    topics = {"hpc1": {topic.exchange: topic for topic in endpoint.topics}}
    report = audit("/", users, rights, topics)
    assert report.checked == ["alice", "hpc1", "unanchored"]
    assert report.administrators == ["root"]
    assert {finding.user for finding in report.too_broad} == {"unanchored"}

    loose = {"hpc1": {EVENTS_EXCHANGE: TopicRights(EVENTS_EXCHANGE, "^hpc1", "^$")}}
    flagged = audit("/", users[:1], {"hpc1": endpoint.rights}, loose).too_broad
    assert [finding.problem for finding in flagged] == [
        "may publish 'hpc1x.psij.job_status' on orbit.events (another endpoint's events)",
        "may publish 'hpc1x.online' on orbit.topology (another endpoint's presence)",
    ]
