# orbit_mq developer tasks. `make` alone lists them.
# Variables: PYTHON (interpreter for the venv, default python3, must be >= 3.11),
#            PYTEST_ARGS (extra pytest arguments), ORBIT_MQ_URL (broker; passed through).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Pass the broker URL through to scripts and tests (only when set: an empty value would be a bad URL).
ifdef ORBIT_MQ_URL
export ORBIT_MQ_URL
endif

.PHONY: help venv broker slurm sshd test cluster cluster-down test-cluster demo lint schemas bench clean

help:
	@echo "orbit_mq make targets:"
	@echo "  venv     create .venv ($(PYTHON) >= 3.11) and pip install -e '.[test]' (only when pyproject.toml changed)"
	@echo "  broker   make sure an AMQP broker is reachable (scripts/ensure-broker.sh)"
	@echo "  slurm    make sure a Slurm cluster is usable (scripts/ensure-slurm.sh; as root it sets one up)"
	@echo "  sshd     a loopback sshd on 127.0.0.1:2222 for the tunnel tests (scripts/ensure-sshd.sh; root)"
	@echo "  test     venv + broker, then pytest -q -ra \$$(PYTEST_ARGS)"
	@echo "  cluster  a local 3-node RabbitMQ cluster beside the system broker (scripts/cluster/; root;"
	@echo "           idempotent), AMQP 127.0.0.1:5711-5713; prints the URL to use"
	@echo "  cluster-down   stop that cluster (its data is kept: the next start is warm)"
	@echo "  test-cluster   cluster, then the integration tests against it with quorum queues"
	@echo "  demo     venv + broker, then orbit-mq demo"
	@echo "  lint     ruff check, ruff format --check, mypy -p orbit_mq and typing_checks/"
	@echo "  schemas  orbit-mq schemas"
	@echo "  bench    the benchmarks: bench/rpc.py, bench/jobs.py, bench/tasks.py, bench/staging.py (JSON on stdout);"
	@echo "           bench/scale.py (endpoints per broker; root, boots a node of its own) runs on its own"
	@echo "  clean    remove .venv and caches"
	@echo "Variables: PYTHON=$(PYTHON) PYTEST_ARGS='$(PYTEST_ARGS)' ORBIT_MQ_URL (from the environment; default: local broker)"

venv: $(STAMP)

# The interpreter: created once. Order-only below, so the venv dir's mtime never forces a reinstall.
$(VPY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' not found; orbit_mq needs Python >= 3.11 (e.g.: make PYTHON=python3.11 $(MAKECMDGOALS))" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: orbit_mq needs Python >= 3.11, but '$(PYTHON)' is $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "       Install a newer Python and run e.g.: make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; \
	  exit 1; }
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(VPY) -m pip install -q --upgrade pip || echo "warning: could not upgrade pip; continuing with $$($(VPY) -m pip -V)" >&2

# The install: redone only when pyproject.toml changes (or after a failed install).
$(STAMP): pyproject.toml | $(VPY)
	@$(VPY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(VENV) uses $$($(VPY) -V 2>&1); orbit_mq needs >= 3.11. Run: make clean venv" >&2; exit 1; }
	$(VENV)/bin/pip install -e '.[test]' --config-settings editable_mode=strict
	@touch $@

broker:
	bash scripts/ensure-broker.sh

slurm:
	bash scripts/ensure-slurm.sh

sshd:
	bash scripts/ensure-sshd.sh

test: venv broker
	$(VPY) -P -m pytest -q -ra $(PYTEST_ARGS)

# A 3-node cluster of our own (scripts/cluster/: the system broker on 5672 is never touched).
# net_ticktime 10: a hung node is given up on in 10-12.5 s, not 45-75 s (docs/scaling.md);
# autoheal ends the partition such a node leaves behind when it wakes up.
CLUSTER_DIR ?= /tmp/orbit-mq-cluster
CLUSTER_CONF := $$'net_ticktime = 10\ncluster_partition_handling = autoheal'
CLUSTER_URL = $$(. $(CLUSTER_DIR)/cluster.env && echo "$$RMQ_CLUSTER_URL")
# Deselected against the cluster: broker_restart restarts the broker on 127.0.0.1 with
# rabbitmqctl, that is the system node, not the cluster; single_node makes broker users on the
# local node (rabbitmqctl, management API) or tunnels to one broker address; tests/test_cluster.py
# starts a cluster of its own (make test runs it).
CLUSTER_PYTEST_ARGS ?= -m 'not broker_restart and not single_node' --ignore=tests/test_cluster.py

cluster:
	@RMQ_CLUSTER_DIR=$(CLUSTER_DIR) RMQ_CLUSTER_EXTRA_CONF=$(CLUSTER_CONF) bash scripts/cluster/cluster-up.sh
	@echo "cluster URL: ORBIT_MQ_URL=$(CLUSTER_URL)  (with ORBIT_MQ_QUEUE_TYPE=quorum)"

cluster-down:
	RMQ_CLUSTER_DIR=$(CLUSTER_DIR) bash scripts/cluster/cluster-down.sh

test-cluster: venv cluster
	ORBIT_MQ_TEST_URL=$(CLUSTER_URL) ORBIT_MQ_QUEUE_TYPE=quorum \
	  $(VPY) -P -m pytest -q -ra $(CLUSTER_PYTEST_ARGS) $(PYTEST_ARGS)

demo: venv broker
	$(VENV)/bin/orbit-mq demo

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	# mypy runs outside the repo so it reads the installed package-dir mapping (orbit_mq.workers, orbit_mq.cli)
	cd /tmp && $(CURDIR)/$(VENV)/bin/mypy -p orbit_mq --config-file $(CURDIR)/pyproject.toml
	# the SDK's types as a user sees them (assert_type; a misspelt parameter must be an error)
	cd /tmp && $(CURDIR)/$(VENV)/bin/mypy $(CURDIR)/typing_checks --config-file $(CURDIR)/pyproject.toml
	# the python examples in README.md and docs/ type-check against the SDK
	$(VPY) scripts/doc_snippets.py build/doc-snippets
	cd /tmp && $(CURDIR)/$(VENV)/bin/mypy $(CURDIR)/build/doc-snippets --config-file $(CURDIR)/pyproject.toml

schemas: venv
	$(VENV)/bin/orbit-mq schemas

bench: venv broker
	$(VPY) bench/rpc.py
	$(VPY) bench/jobs.py
	$(VPY) bench/tasks.py
	$(VPY) bench/staging.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +
