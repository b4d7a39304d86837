"""The `orbit-mq` command line (typer + rich); the app is `orbit_mq.cli.main.app`."""
