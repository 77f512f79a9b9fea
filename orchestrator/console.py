"""Progress lines for people: on stderr, so stdout stays for results (``--json``)."""
import sys


def progress(message: str) -> None:
    print(f"[mlops] {message}", file=sys.stderr, flush=True)
