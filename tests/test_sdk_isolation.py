"""The SDK stands on the contracts alone: `import orbit_mq` loads no endpoint runtime, and a
client without psij-python, psutil or paramiko calls a real endpoint and gets the same typed
results as one where they are installed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from conftest import cli_env, wait_online

import orbit_mq
from orbit_mq import JobSpec, PsiJ
from orbit_mq.contracts.sysinfo import Metrics

CLIENT = textwrap.dedent(
    """
    import asyncio, importlib.abc, json, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"psij", "psutil", "paramiko"}:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocked())
    import orbit_mq
    from orbit_mq import JobSpec, PsiJ

    async def main(url, endpoint):
        async with orbit_mq.connect(url) as fabric:
            psij = await fabric.endpoint(endpoint).plugin(PsiJ)
            job = await psij.submit_job(spec=JobSpec(executable="/bin/true"))
            done = await job.wait(timeout=60)
            sysinfo = await fabric.endpoint(endpoint).plugin("sysinfo")  # known by name
            metrics = await sysinfo.metrics()
        loaded = [m for m in sys.modules if m.startswith("orbit_mq.workers")]
        loaded += [m for m in ("psij", "psutil", "paramiko") if m in sys.modules]
        print(json.dumps({
            "job": f"{type(job).__module__}.{type(job).__qualname__}",
            "done": f"{type(done).__module__}.{type(done).__qualname__}",
            "state": done.state,
            "metrics": f"{type(metrics).__module__}.{type(metrics).__qualname__}",
            "loaded": loaded,
        }))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def qualified(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def test_import_orbit_mq_loads_no_endpoint_runtime() -> None:
    code = (
        "import sys, orbit_mq; print([m for m in sys.modules if m.startswith('orbit_mq.workers')])"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr


async def test_a_client_without_the_runtime_gets_the_same_typed_results(
    endpoint_process: Callable[..., subprocess.Popen[str]],
    fabric: orbit_mq.Fabric,
    settings: orbit_mq.Settings,
    name: str,
) -> None:
    endpoint_process("--plugins", "psij,sysinfo")
    await wait_online(fabric, name)
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", CLIENT, settings.url, name,
        env=cli_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(run.communicate(), 120)
    assert run.returncode == 0, err.decode()
    without = json.loads(out)
    assert without["loaded"] == []  # no runtime, no psij, psutil or paramiko

    # The same calls here, where the runtime is importable, give the same types.
    psij = await fabric.endpoint(name).plugin(PsiJ)
    job = await psij.submit_job(spec=JobSpec(executable="/bin/true"))
    done = await job.wait(timeout=60)
    metrics = await (await fabric.endpoint(name).plugin("sysinfo")).metrics()
    assert isinstance(job, orbit_mq.Job) and isinstance(metrics, Metrics)
    assert (without["job"], without["done"], without["metrics"]) == (
        qualified(job),
        qualified(done),
        qualified(metrics),
    )
    assert without["state"] == done.state == "COMPLETED"
