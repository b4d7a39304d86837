"""The tasks plugin: many small tasks and Python functions (see orbit_mq/contracts/tasks)."""
