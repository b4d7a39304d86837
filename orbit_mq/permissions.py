"""The least-privilege model: the broker rights of an endpoint's and a client's user, and the
audit that compares what a broker grants with it (docs/security.md).

Every regex is derived from the wire names in orbit_mq/protocol.py (a name function called with
placeholders, then escaped), so that a renamed queue or exchange renames its permission too.
RabbitMQ matches a permission regex against a resource name with an unanchored search; ours
are anchored at both ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from orbit_mq.protocol import (
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    NAME_PATTERN,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    PresenceStatus,
    audit_key,
    check_name,
    discovery_queue,
    event_key,
    legacy_event_key,
    owner_word,
    presence_key,
    private_subscription_queue,
    request_queue,
    subscription_queue,
    word_event_key,
)

# RabbitMQ's own name for the default exchange in permission checks: replies to direct
# reply-to addresses are published to it.
DEFAULT_EXCHANGE = "amq.default"
NOTHING = "^$"  # a regex that matches no resource name

WORD = NAME_PATTERN.removeprefix("^").removesuffix("$")  # an endpoint, plugin or queue word
PID = "[0-9]+"
HEX_TOKEN = "[0-9a-f]{32}"  # uuid4().hex
KEY_WORD = "[^.]+"  # one routing-key word (an event topic; in a binding also `*` or `#`)
OWNER_WORD = "[A-Za-z0-9@+_%-]+"  # what owner_word() makes of any user name


class Role(StrEnum):
    """What a broker user is for; kept as a user tag on the broker (`orbit-endpoint`, …)."""

    ENDPOINT = "endpoint"
    CLIENT = "client"

    @property
    def tag(self) -> str:
        return f"orbit-{self.value}"


ADMINISTRATOR_TAG = "administrator"
# A client granted every user's events and the audit events (`admin user add --all-events`).
ALL_EVENTS_TAG = "orbit-all-events"
# An endpoint that is a member of a pool carries the pool's name in a tag: `orbit-pool-hpc1`.
POOL_TAG_PREFIX = "orbit-pool-"


def pool_tag(pool: str) -> str:
    return POOL_TAG_PREFIX + check_name("pool", pool)


@dataclass(frozen=True)
class Rights:
    """A user's configure, write and read regexes on one vhost."""

    configure: str
    write: str
    read: str

    def regex(self, kind: str) -> str:
        return {"configure": self.configure, "write": self.write, "read": self.read}[kind]


@dataclass(frozen=True)
class TopicRights:
    """A user's topic permissions on one topic exchange: which routing keys it may publish
    (write) and bind (read)."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True)
class Grant:
    """Everything a user of one role is given."""

    user: str
    role: Role
    rights: Rights
    topics: tuple[TopicRights, ...] = ()


def template(text: str, **words: str) -> str:
    """`text` as a literal regex, with each `{placeholder}` in it replaced by `words[...]`."""
    escaped = re.escape(text)
    for placeholder, regex in words.items():
        escaped = escaped.replace(re.escape("{" + placeholder + "}"), regex)
    return escaped


def one_of(*alternatives: str) -> str:
    return "^(?:" + "|".join(alternatives) + ")$"


def literal(*names: str) -> list[str]:
    return [re.escape(name) for name in names]


def endpoint_queues(name: str) -> list[str]:
    """Regexes of the queues endpoint `name` declares: its request queues, its discovery queue."""
    return [
        template(request_queue(name, "{plugin}"), plugin=WORD),
        template(discovery_queue(name, "{pid}"), pid=PID),
    ]


def client_queues(user: str) -> list[str]:
    """Regexes of the queues client `user` declares: its durable subscriptions' queues (under
    its owner word: no other user's) and its private ones."""
    return [
        template(subscription_queue(user, "{name}"), name=WORD),
        template(private_subscription_queue("{token}"), token=HEX_TOKEN),
    ]


def own_events(user: str) -> str:
    """The binding keys on orbit.events that client `user` may use: four words, the last its
    owner word, so every key such a binding matches is about its own work."""
    key = template(
        word_event_key("{endpoint}", "{plugin}", "{topic}", owner_word(user)),
        endpoint=KEY_WORD, plugin=KEY_WORD, topic=KEY_WORD,
    )  # fmt: skip
    return "^" + key + "$"


def endpoint_grant(name: str, pool: str | None = None) -> Grant:
    """An endpoint's rights: its own queues (and its pool's request queues); publishing
    replies, its events and its presence, the last two only under its own name (topic
    permissions)."""
    check_name("endpoint", name)
    own = endpoint_queues(name)
    if pool is not None:
        own.append(template(request_queue(check_name("pool", pool), "{plugin}"), plugin=WORD))
    rights = Rights(
        configure=one_of(*own),
        # Queues: bound by it. orbit.dlx: its queues dead-letter there, and declaring such a
        # queue needs write on that exchange. amq.default: direct replies are published there.
        write=one_of(
            *own,
            *literal(EVENTS_EXCHANGE, TOPOLOGY_EXCHANGE, DEAD_LETTER_EXCHANGE, DEFAULT_EXCHANGE),
        ),
        # Queues: consumed. orbit.rpc: its queues are bound to it (read on the source).
        read=one_of(*own, *literal(RPC_EXCHANGE)),
    )
    statuses = "(?:" + "|".join(re.escape(status.value) for status in PresenceStatus) + ")"
    owned = word_event_key(name, "{plugin}", "{topic}", "{owner}")
    topics = (
        TopicRights(
            EVENTS_EXCHANGE,
            # Its events, under each owner's word; under protocol 1's keys too (an endpoint
            # told to publish them); and its audit events.
            write=one_of(
                template(owned, plugin=WORD, topic=KEY_WORD, owner=OWNER_WORD),
                template(
                    legacy_event_key(name, "{plugin}", "{topic}"), plugin=WORD, topic=KEY_WORD
                ),
                re.escape(audit_key(name)),
            ),
            read=NOTHING,
        ),
        TopicRights(
            TOPOLOGY_EXCHANGE,
            write="^" + template(presence_key(name, "{status}"), status=statuses) + "$",
            read=NOTHING,
        ),
    )
    return Grant(name, Role.ENDPOINT, rights, topics)


def client_grant(name: str, all_events: bool = False) -> Grant:
    """A client's rights: send requests (and discovery) to orbit.rpc, subscribe to presence
    and to the events about its own work (all events, the audit ones too, if `all_events`)
    through queues of its own. Replies come by direct reply-to, which needs no right, and
    checking an endpoint's queue is a passive declare, which needs none either."""
    own = client_queues(name)
    rights = Rights(
        configure=one_of(*own),
        write=one_of(*own, *literal(RPC_EXCHANGE)),
        read=one_of(*own, *literal(EVENTS_EXCHANGE, TOPOLOGY_EXCHANGE)),
    )
    events = TopicRights(
        EVENTS_EXCHANGE, write=NOTHING, read=".*" if all_events else own_events(name)
    )
    return Grant(name, Role.CLIENT, rights, (events,))


def grant_for(role: Role, name: str, all_events: bool = False, pool: str | None = None) -> Grant:
    if role is Role.ENDPOINT:
        return endpoint_grant(name, pool)
    return client_grant(name, all_events)


# -- the audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerUser:
    name: str
    tags: tuple[str, ...]

    @property
    def role(self) -> Role | None:
        return next((role for role in Role if role.tag in self.tags), None)

    @property
    def administrator(self) -> bool:
        return ADMINISTRATOR_TAG in self.tags

    @property
    def all_events(self) -> bool:
        return ALL_EVENTS_TAG in self.tags

    @property
    def pool(self) -> str | None:
        """The pool named by its `orbit-pool-{pool}` tag, if any."""
        for tag in self.tags:
            if tag.startswith(POOL_TAG_PREFIX) and tag != POOL_TAG_PREFIX:
                return tag.removeprefix(POOL_TAG_PREFIX)
        return None


@dataclass(frozen=True)
class Finding:
    """One way a user's rights differ from its role's model."""

    user: str
    problem: str
    too_broad: bool  # False: a right the role needs is missing (it will fail, not leak)


@dataclass(frozen=True)
class Probe:
    """A resource name the audit tries every regex against, and what it is."""

    name: str
    what: str


def probes(user: str) -> list[Probe]:
    """Names standing for every kind of resource: the user's own (were it an endpoint) and
    another endpoint's, whose name starts like the user's (catches unanchored regexes)."""
    other = f"{user}x"[:64]
    named = [
        Probe(RPC_EXCHANGE, "the requests exchange"),
        Probe(EVENTS_EXCHANGE, "the events exchange"),
        Probe(TOPOLOGY_EXCHANGE, "the presence exchange"),
        Probe(DEAD_LETTER_EXCHANGE, "the dead-letter exchange and queue"),
        Probe(DEFAULT_EXCHANGE, "the default exchange"),
        Probe("amq.topic", "a broker exchange orbit_mq does not use"),
        Probe(request_queue(user, "psij"), "its own request queue"),
        Probe(discovery_queue(user, 1), "its own discovery queue"),
        Probe(request_queue(other, "psij"), "another endpoint's request queue"),
        Probe(discovery_queue(other, 1), "another endpoint's discovery queue"),
        Probe(subscription_queue(user, "watch"), "its own durable subscription's queue"),
        Probe(subscription_queue(other, "watch"), "another user's durable subscription's queue"),
        Probe(private_subscription_queue("0" * 32), "a subscription's private queue"),
        Probe("unrelated", "a queue or exchange outside orbit_mq's names"),
    ]
    # An unanchored regex also grants names that merely contain one of ours.
    around = [Probe(f"x.{p.name}.x", f"a name outside orbit_mq's around {p.name!r}") for p in named]
    return named + around


def topic_probes(user: str) -> dict[str, list[Probe]]:
    other = f"{user}x"[:64]
    return {
        EVENTS_EXCHANGE: [
            Probe(event_key(user, "psij", "job_status", user), "its own events"),
            Probe(event_key(other, "psij", "job_status", user), "another endpoint's events"),
            Probe(event_key("*", "*", "*", user), "events about its own work"),
            Probe(event_key("*", "*", "*", other), "events about another user's work"),
            Probe(legacy_event_key(user, "psij", "job_status"), "its own protocol 1 events"),
            Probe("#", "every event"),
            Probe(audit_key(user), "its own audit events"),
            Probe(audit_key("*"), "every endpoint's audit events"),
        ],
        TOPOLOGY_EXCHANGE: [
            Probe(presence_key(user, PresenceStatus.ONLINE), "its own presence"),
            Probe(presence_key(other, PresenceStatus.ONLINE), "another endpoint's presence"),
        ],
    }


def matches(regex: str, name: str, user: str, vhost: str) -> bool:
    """RabbitMQ's test: an unanchored search; topic regexes may use {username} and {vhost}."""
    expanded = regex.replace("{username}", re.escape(user)).replace("{vhost}", re.escape(vhost))
    try:
        return re.search(expanded, name) is not None
    except re.error:
        return True  # a regex we cannot read is assumed to grant what it might


def audit_rights(model: Grant, actual: Rights, vhost: str) -> list[Finding]:
    findings: list[Finding] = []
    for kind in ("configure", "write", "read"):
        given, wanted = actual.regex(kind), model.rights.regex(kind)
        for probe in probes(model.user):
            found = _compared(
                model, vhost, given, wanted, probe,
                broad=f"{kind} {given!r} covers {probe.name!r} ({probe.what})",
                lacking=f"{kind} {given!r} lacks {probe.name!r} ({probe.what}), which it needs",
            )  # fmt: skip
            findings.extend(found)
    return findings


def audit_topics(
    model: Grant, actual: Rights, topics: Mapping[str, TopicRights], vhost: str
) -> list[Finding]:
    """Routing keys on the topic exchanges: with write (read) on an exchange and no topic
    permission there, RabbitMQ lets a user publish (bind) any key."""
    findings: list[Finding] = []
    wanted = {topic.exchange: topic for topic in model.topics}
    for exchange, keys in topic_probes(model.user).items():
        for kind in ("write", "read"):
            if not matches(actual.regex(kind), exchange, model.user, vhost):
                continue  # no right on the exchange at all: keys do not matter
            given = getattr(topics.get(exchange), kind, ".*")
            limit = getattr(wanted.get(exchange), kind, ".*")
            verb = "publish" if kind == "write" else "bind"
            for probe in keys:
                found = _compared(
                    model, vhost, given, limit, probe,
                    broad=f"may {verb} {probe.name!r} on {exchange} ({probe.what})",
                    lacking=f"may not {verb} {probe.name!r} on {exchange} ({probe.what})",
                )  # fmt: skip
                findings.extend(found)
    return findings


def _compared(
    model: Grant, vhost: str, given: str, wanted: str, probe: Probe, *, broad: str, lacking: str
) -> list[Finding]:
    """What is wrong with regex `given` for `probe`, measured against the model's `wanted`:
    it covers a name the model does not (`broad`), or lacks one the model needs (`lacking`)."""
    has = matches(given, probe.name, model.user, vhost)
    needs = matches(wanted, probe.name, model.user, vhost)
    if has == needs:
        return []
    return [Finding(model.user, broad if has else lacking, too_broad=has)]


@dataclass
class Audit:
    """What `orbit-mq admin check` reports for one vhost."""

    vhost: str
    findings: list[Finding]
    checked: list[str]  # users compared with a model
    administrators: list[str]  # full rights by design: not compared

    @property
    def too_broad(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.too_broad]


def audit(
    vhost: str,
    users: Iterable[BrokerUser],
    rights: Mapping[str, Rights],
    topics: Mapping[str, Mapping[str, TopicRights]],
) -> Audit:
    """Compare every user with rights on `vhost` with its role's model. A user with no orbit
    role is held to the client model, the narrower of the two that see other users' work."""
    report = Audit(vhost, [], [], [])
    for user in sorted(users, key=lambda user: user.name):
        if user.name not in rights:
            continue
        if user.administrator:
            report.administrators.append(user.name)
            continue
        role = user.role or Role.CLIENT
        model = (
            grant_for(role, user.name, user.all_events, user.pool)
            if _valid(user.name) and (user.pool is None or _valid(user.pool))
            else client_grant(user.name, user.all_events)
        )
        report.checked.append(user.name)
        report.findings += audit_rights(model, rights[user.name], vhost)
        report.findings += audit_topics(model, rights[user.name], topics.get(user.name, {}), vhost)
    return report


def _valid(name: str) -> bool:
    try:
        check_name("endpoint", name)
    except ValueError:
        return False
    return True
