"""The app the benchmarks run; the broker URL comes from CELERIAC_BROKER_URL."""

from celeriac import Celeriac, shared_task

app = Celeriac("benchproj")


@shared_task(name="bench.noop")
def noop() -> None:
    return None


@shared_task(name="bench.anoop")
async def anoop() -> None:
    return None
