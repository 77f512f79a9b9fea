"""``python -m taxi_fares_mlops.serving --bundle DIR``: the service's command, the same in the container and in
``mlops serve --local``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from taxi_fares_mlops.serving.app import Settings, create_app
from taxi_fares_mlops.serving.bundle import BundleError, verify
from taxi_fares_mlops.signing import TRUSTED_KEY_ENV


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="taxi_fares_mlops.serving", description=__doc__)
    p.add_argument("--bundle", required=True, help="the serving bundle folder (`mlops serving package`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-trips", type=int, default=1000, help="trips per request above which it gets a 413")
    p.add_argument("--drift-window", type=int, default=1000, help="recent trips the drift status is judged on")
    p.add_argument("--drift-min-rows", type=int, default=200, help="trips in the window before drift is judged")
    p.add_argument("--feature-tables", help="refresh online features from this lakehouse tables folder")
    p.add_argument("--refresh-seconds", type=float, default=300.0)
    p.add_argument("--lookback-hours", type=float, default=24.0)
    p.add_argument("--telemetry-file", help="write telemetry as JSON lines here when no connection string is set")
    p.add_argument("--trusted-key", default=os.environ.get(TRUSTED_KEY_ENV) or None,
                   help=f"the Ed25519 public key (PEM) the bundle must be signed with (default ${TRUSTED_KEY_ENV})")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(bundle=args.bundle, max_trips=args.max_trips, drift_window=args.drift_window,
                    drift_min_rows=args.drift_min_rows, feature_tables=args.feature_tables,
                    refresh_seconds=args.refresh_seconds, lookback_hours=args.lookback_hours,
                    telemetry_file=args.telemetry_file,
                    connection_string=os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or None,
                    trusted_key=args.trusted_key).checked()


def main(argv: Optional[Sequence[str]] = None) -> int:
    import uvicorn

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
        # Refused before the port opens: an incomplete or mismatched bundle never serves (the models and
        # features then load in the background while /health/ready answers 503).
        verify(args.bundle, args.trusted_key)  # its signature and every file, before anything is unpickled
    except (ValueError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
