"""EventRecorder.click cost on SQLite: the per-process-prefix + counter event id
against the old ``uuid.uuid4().hex`` per event, and what ``tracking.privacy.anonymize_ip``
(IPv4, IPv6) and a non-ASCII User-Agent (read again as UTF-8) add to a click,
each beside the plain click in the same run.

Run: .venv/bin/python benchmarks/recorder.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from postal_tracking_plugin.config import load_config
from postal_tracking_plugin.events import EventRecorder
from postal_tracking_plugin.store import open_store


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "postal.yml"
        cfg.write_text(yaml.safe_dump({"tracking": {"data_dir": "data"}}))
        config = load_config(cfg)
        store = open_store(config)
        store.create_schema()
        rec = EventRecorder(config, store, webhooks=False)
        kw = {
            "server_id": 1,
            "server_token": "abc123",
            "message_id": 1,
            "link_id": 1,
            "url": "https://example.com/",
            "ip_address": "203.0.113.3",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        }
        old_id = _per_call(lambda: uuid.uuid4().hex, n)
        new_id = _per_call(rec._next_id, n)
        click_new = _per_call(lambda: rec.click(**kw), n)
        real_next_id = rec._next_id
        rec._next_id = lambda: uuid.uuid4().hex  # type: ignore[method-assign]
        click_old = _per_call(lambda: rec.click(**kw), n)
        rec._next_id = real_next_id  # type: ignore[method-assign]
        plain = _per_call(lambda: rec.click(**kw), n)
        rec._anonymize = True
        anon_v4 = _per_call(lambda: rec.click(**kw), n)
        anon_v6 = _per_call(lambda: rec.click(**{**kw, "ip_address": "2001:db8:1:2::3"}), n)
        rec._anonymize = False
        utf8_agent = "Mozilla/5.0 café".encode().decode("latin-1")  # as WSGI hands it over
        utf8 = _per_call(lambda: rec.click(**{**kw, "user_agent": utf8_agent}), n)
        print(f"n={n}")
        print(
            f"event id   old uuid4().hex: {old_id:7.2f} us   new prefix+counter: {new_id:7.2f} us"
        )
        print(
            f"click()    with uuid4 ids:  {click_old:7.2f} us   with prefix+counter: {click_new:7.2f} us"
        )
        print(
            f"click()    plain:           {plain:7.2f} us   anonymize_ip IPv4: {anon_v4:7.2f} us   "
            f"IPv6: {anon_v6:7.2f} us"
        )
        print(
            f"click()    ASCII agent:     {plain:7.2f} us   UTF-8 agent (decoded): {utf8:7.2f} us"
        )


if __name__ == "__main__":
    main()
