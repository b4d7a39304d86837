"""`python -m orbit_mq.cli`."""

from orbit_mq.cli.main import run

run()
