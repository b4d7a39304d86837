"""A RabbitMQ cluster of the tests' own: `size` BrokerNodes (tests/broker_node.py) with one
cookie, the first the seed the others join (as scripts/cluster/cluster-up.sh does it for
`make cluster`).

    cluster = BrokerCluster(tmp_path, size=3)
    url = cluster.start()   # ≈ 20 s; amqp://guest:guest@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/
    cluster.kill(0)         # SIGKILL node 0's VM (a crash)
    cluster.restart(0)      # boot it again on its data: it rejoins by itself (≈ 8 s)
    cluster.freeze(1)       # SIGSTOP (a hung node) ... cluster.thaw(1); cluster.heal(1)
    cluster.stop()

Node names are drawn afresh for every cluster, ports too unless given (`cluster_ports`: the
project's cluster ports 5711-5713 when free), so runs in parallel do not meet.
`net_ticktime = 10`: the other nodes give up on a hung one within 10-12.5 s (Erlang's tick
detection) instead of 45-75 s, so quorum queues elect a new leader and channels stop waiting
on it (with the default 60 s a SIGSTOPped node stalls consumers via the others for the whole
freeze). A hung node that comes back has been given up on, and finds itself alone: a
partition. `cluster_partition_handling = autoheal` (as `make cluster`) stops its app as soon as
it is back, so that no client lands on a node that cannot reach the others (with `ignore` it
serves on alone: replies published there to a caller on another node vanish, see
docs/scaling.md); `heal` starts its app again at once instead of autoheal's ≈ 60 s.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broker_node import BrokerNode, port_free

NET_TICKTIME = 10  # s; see above
DIAGNOSTICS = "rabbitmq-diagnostics"
CLUSTER_CONFIG = [f"net_ticktime = {NET_TICKTIME}", "cluster_partition_handling = autoheal"]
SETTLE_TIMEOUT = 60.0  # s for every node to see all members running
FIRST_PORT = 5711  # the cluster ports of this project: 5711-5713 (as `make cluster`)


def _cookie() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))


def cluster_ports(size: int) -> list[int] | None:
    """The cluster ports (FIRST_PORT on, with their distribution ports 20000 above) when all
    are free; None when any is taken (`make cluster` runs there: its nodes are left alone)."""
    ports = [FIRST_PORT + index for index in range(size)]
    if all(port_free(port) and port_free(port + 20000) for port in ports):
        return ports
    return None


class BrokerCluster:
    def __init__(
        self,
        directory: Path,
        size: int = 3,
        config: list[str] | None = None,
        ports: list[int] | None = None,
    ) -> None:
        """`ports`: the nodes' AMQP ports (default: free ones drawn at random)."""
        cookie = _cookie()
        lines = [*CLUSTER_CONFIG, *(config or [])]
        self.nodes = [
            BrokerNode(
                directory / f"n{index}",
                config=lines,
                cookie=cookie,
                port=ports[index] if ports else None,
            )
            for index in range(size)
        ]

    @property
    def url(self) -> str:
        """One URL naming every node (orbit_mq tries them in order, then rotates)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/"

    def node_url(self, index: int) -> str:
        return self.nodes[index].url

    def index_of(self, port: int | None) -> int:
        """Which node listens on `port` (a connection's current URL names it)."""
        return [node.port for node in self.nodes].index(port)

    def start(self) -> str:
        """Boot every node at once, join the others to the first, wait until all run."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(BrokerNode.start, self.nodes))
            seed = self.nodes[0].node
            for node in self.nodes[1:]:  # one at a time, as scripts/cluster/cluster-up.sh does
                node.join_cluster(seed)
            self.wait_running()
        except BaseException:
            self.stop()
            raise
        return self.url

    def running(self, via: int = 0) -> set[str]:
        """The node names `via` reports running (`cluster_status`)."""
        status = json.loads(self.nodes[via].ctl("-q", "cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def wait_running(self, via: int | None = None, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until every node is a running member, as seen from `via` (default: each node)."""
        every = {node.node for node in self.nodes}
        asked = range(len(self.nodes)) if via is None else [via]
        deadline = time.monotonic() + timeout
        for index in asked:
            while every - self.running(index):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster not whole after {timeout} s: {self.running(0)}")
                time.sleep(0.5)  # polling the CLI: membership has no event to wait on

    def quorum_critical(self, index: int) -> bool:
        """Whether some quorum queue would lose its majority without this node (a node that
        was just booted again may still be catching up)."""
        try:
            self.nodes[index].ctl("-q", "check_if_node_is_quorum_critical", tool=DIAGNOSTICS)
        except RuntimeError:
            return True
        return False

    def wait_spare(self, index: int, timeout: float = SETTLE_TIMEOUT) -> None:
        """Until node `index` can go without a quorum queue losing its majority."""
        deadline = time.monotonic() + timeout
        while self.quorum_critical(index):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {index} still quorum critical after {timeout} s")
            time.sleep(0.5)  # polling the CLI: catching up has no event to wait on

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Boot a killed node again on its data; returns once the cluster is whole."""
        node = self.nodes[index]
        if node.beam_pid() is not None:
            node.kill()
        node.start()
        self.wait_running(via=index)

    def revive(self) -> None:
        """Boot again every node that is down (thawing a frozen one first)."""
        for index, node in enumerate(self.nodes):
            node.thaw_quietly()
            if node.process is None or node.process.poll() is not None:
                self.restart(index)

    def freeze(self, index: int) -> None:
        self.nodes[index].freeze()

    def thaw(self, index: int) -> None:
        self.nodes[index].thaw()

    def heal(self, index: int) -> None:
        """After a thaw: restart the node's app (its peers gave up on it; autoheal may have
        stopped it already), wait until whole."""
        node = self.nodes[index]
        node.ctl("stop_app")
        node.ctl("start_app")
        self.wait_running()

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(BrokerNode.stop, self.nodes))
