"""One libtorrent peer for bench_swarm.py's comparison column (not part of p2pupdate).

Run as a child process by ``bench_swarm.py``; needs the ``libtorrent`` wheel, which is a
benchmark-only extra and not a dependency of the project. Line protocol on stdin/stdout:

    child -> "ready"             torrent added (and, for the seed, checked)
    parent -> "go HOST:PORT ..."  connect to these peers; the clock starts
    child -> "done UNIX_TIME"    (leecher) every piece downloaded and hash-checked
    child -> "up BYTES"          answer to "stats", total payload uploaded
    parent -> "quit"             exit

Fairness (docs/performance.md):
127.0.0.0/8 is put in the global peer class (libtorrent exempts local
peers from rate limits and unchoke slots by default), and several connections per IP are
allowed, since every peer is on 127.0.0.1. No DHT, LSD, UPnP or NAT-PMP: peers only know
the addresses the parent gives them. It does nothing else.
"""

from __future__ import annotations

import argparse
import select
import sys
import time

import libtorrent as lt

__all__: list[str] = []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upload-limit", type=int, default=0)
    ap.add_argument("--seed", action="store_true")
    ap.add_argument("--super-seed", action="store_true")
    a = ap.parse_args()

    settings = {
        "listen_interfaces": f"127.0.0.1:{a.port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": a.upload_limit,
        "alert_mask": lt.alert.category_t.error_notification,
    }
    ses = lt.session(settings)
    ipf = lt.ip_filter()
    ipf.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(ipf)
    info = lt.torrent_info(a.torrent)
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = a.save
    if a.seed:
        params.flags |= lt.torrent_flags.seed_mode
        if a.super_seed:
            params.flags |= lt.torrent_flags.super_seeding
    h = ses.add_torrent(params)
    deadline = time.monotonic() + 60
    while a.seed and not h.status().is_seeding and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", flush=True)
    done_sent = a.seed
    while True:
        r, _, _ = select.select([sys.stdin], [], [], 0.01)
        if r:
            line = sys.stdin.readline()
            if not line or line.startswith("quit"):
                return 0
            if line.startswith("go"):
                for hp in line.split()[1:]:
                    host, port = hp.rsplit(":", 1)
                    h.connect_peer((host, int(port)))
            elif line.startswith("stats"):
                print(f"up {h.status().total_payload_upload}", flush=True)
        if not done_sent:
            st = h.status()
            if st.is_seeding or st.is_finished:
                print(f"done {time.time():.6f}", flush=True)
                done_sent = True
        ses.pop_alerts()


if __name__ == "__main__":
    sys.exit(main())
