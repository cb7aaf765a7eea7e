"""An empty Prefect flow: what any tierflow run pays before doing work (interpreter, `import prefect`, one
flow run against the API), measured with the benchmark's server and with Prefect's temporary server."""
from prefect import flow


@flow(name="bench-noop")
def noop() -> None:
    return None


if __name__ == "__main__":
    noop()
