"""The dashboard's pages, one view each; the numbers come from the store's query layer."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING
from typing import SupportsFloat

from flask import Blueprint
from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask.typing import ResponseReturnValue
from werkzeug.security import check_password_hash

from postal_tracking_plugin.errors import Error
from postal_tracking_plugin.errors import PostalOwnsThis
from postal_tracking_plugin.store import Filter
from postal_tracking_plugin.store import Server
from postal_tracking_plugin.store import TrackDomain

from . import _auth
from . import _health
from ._chart import label
from ._chart import stacked_bars

if TYPE_CHECKING:
    from postal_tracking_plugin.certificates import DomainReport

    from .app import DashboardState

bp = Blueprint("dashboard", __name__)

HOUR, DAY = 3600, 86400
#: Ranges up to this long are charted by the hour, longer ones by the day.
HOURLY_UP_TO = 3 * DAY
SEARCH_LIMIT = 100
POSTAL_OWNS = (
    "Postal's web interface owns these settings (tracking.store is postal): "
    "change them there; they are shown here read-only."
)


def _state() -> DashboardState:
    from .app import state

    return state()


def _page(template: str, **values: object) -> str:
    store = _state().store
    return render_template(
        template,
        servers=store.list_servers(),
        server=values.pop("server", None),
        pct=lambda v: "-" if v is None else f"{v:.1f}%",
        when=_when,
        **values,
    )


def _when(ts: SupportsFloat | str | None) -> str:
    if ts is None:
        return ""
    return f"{_dt.datetime.fromtimestamp(float(ts), _dt.UTC):%Y-%m-%d %H:%M:%S}"


def _day(name: str) -> float | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        day = _dt.date.fromisoformat(value)
    except ValueError:
        abort(400, f"{name}={value!r} is not a date: use YYYY-MM-DD")
    return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.UTC).timestamp()


def _range() -> tuple[float | None, float | None]:
    """``from``/``to`` as Unix seconds; ``to`` is inclusive of its whole day."""
    since, until = _day("from"), _day("to")
    return since, (until + DAY if until is not None else None)


def _server(token: str) -> Server:
    server = _state().store.server_by_token(token)
    if server is None:
        abort(404, f"no server with token {token}")
    return server


def _readonly() -> str | None:
    """The note shown (and the 403 given) where the store refuses changes to tracking
    domains: asked of the store, as the CLI does, not read from the config string."""
    try:
        _state().store.check_changeable("tracking domains")
    except PostalOwnsThis:
        return POSTAL_OWNS
    return None


# -- logging in and out ---------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "GET":
        return _page("login.html", error=None, email="")
    st = _state()
    email = request.form.get("email", "").strip().lower()
    password = request.form.get("password", "")
    keys = [f"addr:{request.remote_addr}", f"user:{email}"]
    wait = st.throttle.wait(keys)
    if wait > 0:
        minutes = int(wait // 60) + 1
        error = f"Too many failed logins: try again in {minutes} minute(s)."
        return _page("login.html", error=error, email=email), 429
    user = st.store.find_dashboard_user(email) if email else None
    if user is None or not check_password_hash(user["password_hash"], password):
        st.throttle.failed(keys)
        return _page("login.html", error="Wrong e-mail address or password.", email=email), 401
    st.throttle.succeeded(keys)
    sid = _auth.new_session_id()
    lifetime = st.config.tracking.dashboard.session_hours * HOUR
    st.store.start_dashboard_session(
        _auth.session_hash(sid), int(user["id"]), request.remote_addr, lifetime
    )
    target = request.args.get("next", "")
    if not target.startswith("/") or target.startswith("//"):
        target = url_for("dashboard.index")
    return redirect(target)


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    sid = session.get("sid")
    if sid:
        _state().store.end_dashboard_session(_auth.session_hash(sid))
    session.clear()
    flash("Logged out.")
    return redirect(url_for("dashboard.login"))


# -- pages ----------------------------------------------------------------------


@bp.route("/")
def index() -> ResponseReturnValue:
    servers = _state().store.list_servers()
    if not servers:
        return _page("no_servers.html")
    return redirect(url_for("dashboard.overview", server=servers[0].token))


def _bucket(since: float | None, until: float | None, first: int | None, last: int | None) -> int:
    start = since if since is not None else first
    end = until if until is not None else (last + HOUR if last is not None else None)
    if start is None or end is None:
        return DAY
    return HOUR if end - start <= HOURLY_UP_TO else DAY


def _by(points: list[dict[str, int]], bucket: int) -> list[dict[str, int]]:
    """Hourly points summed into ``bucket``-second points."""
    if bucket == HOUR:
        return points
    out: dict[int, dict[str, int]] = {}
    for p in points:
        start = p["start"] - p["start"] % bucket
        q = out.setdefault(start, {k: 0 for k in p} | {"start": start})
        for k, v in p.items():
            if k != "start":
                q[k] += v
    return [out[k] for k in sorted(out)]


@bp.route("/servers/<server>/")
def overview(server: str) -> ResponseReturnValue:
    srv = _server(server)
    store = _state().store
    since, until = _range()
    tag = request.args.get("tag", "").strip() or None
    flt = Filter(since=since, until=until, tag=tag)
    # Top links are on their own page: their queries cost more than the rest.
    stats, hourly = store.tracking_overview(srv, flt, top=0)
    bucket = _bucket(
        since,
        until,
        hourly[0]["start"] if hourly else None,
        hourly[-1]["start"] if hourly else None,
    )
    series = _by(hourly, bucket)
    starts = [p["start"] for p in series]
    return _page(
        "overview.html",
        server=srv,
        s=stats,
        form=request.args,
        bucket=bucket,
        series=series,
        label=lambda start: label(start, bucket),
        opens_chart=stacked_bars(
            "Opens: people and machines",
            starts,
            [p["opens_people"] for p in series],
            [p["opens_machines"] for p in series],
            bucket,
        ),
        clicks_chart=stacked_bars(
            "Clicks: people and machines",
            starts,
            [p["clicks_people"] for p in series],
            [p["clicks_machines"] for p in series],
            bucket,
        ),
    )


@bp.route("/servers/<server>/messages")
def messages(server: str) -> ResponseReturnValue:
    srv = _server(server)
    since, until = _range()
    a = request.args
    rows = _state().store.search_messages(
        srv.id,
        rcpt=a.get("rcpt", "").strip() or None,
        subject=a.get("subject", "").strip() or None,
        tag=a.get("tag", "").strip() or None,
        token=a.get("token", "").strip() or None,
        since=since,
        until=until,
        limit=SEARCH_LIMIT,
    )
    return _page("messages.html", server=srv, rows=rows, form=a, limit=SEARCH_LIMIT)


@bp.route("/servers/<server>/messages/<token>")
def message(server: str, token: str) -> ResponseReturnValue:
    srv = _server(server)
    store = _state().store
    row = store.find_message(srv.id, token)
    if row is None:
        abort(404, f"no message with token {token} in server {srv.name}")
    return _page(
        "message.html",
        server=srv,
        m=row,
        events=store.message_timeline(srv.id, int(row["id"])),
        links=store.message_links(srv.id, int(row["id"])),
    )


@bp.route("/servers/<server>/links")
def links(server: str) -> ResponseReturnValue:
    srv = _server(server)
    store = _state().store
    since, until = _range()
    tag = request.args.get("tag", "").strip() or None
    flt = Filter(since=since, until=until, tag=tag)
    top = store.tracking_stats(srv, flt, top=25)["top_links"]
    per_url = store.link_series(srv.id, flt, HOUR, [link["url"] for link in top])
    hours = sorted({h for points in per_url.values() for h in points})
    bucket = _bucket(since, until, hours[0] if hours else None, hours[-1] if hours else None)
    spark = {}
    for url, points in per_url.items():
        series = _by([{"start": h, "clicks": n} for h, n in sorted(points.items())], bucket)
        spark[url] = " ".join(f"{label(p['start'], bucket)}: {p['clicks']}" for p in series)
    return _page(
        "links.html",
        server=srv,
        top=top,
        spark=spark,
        form=request.args,
        bucket=bucket,
    )


# -- tracking domains -------------------------------------------------------------


def _certificates() -> dict[str, DomainReport]:
    from postal_tracking_plugin.certificates import certificate_report

    return {r.domain: r for r in certificate_report(_state().store)}


def _domain(name: str) -> TrackDomain:
    td = _state().store.find_track_domain(name)
    if td is None:
        abort(404, f"no tracking domain {name}")
    return td


@bp.route("/domains")
def domains() -> ResponseReturnValue:
    return _page(
        "domains.html",
        domains=_state().store.list_track_domains(),
        certs=_certificates(),
        readonly=_readonly(),
    )


def hosts(text: str) -> list[str]:
    """Excluded link domains from the form: one per line (commas and spaces also split)."""
    out: list[str] = []
    for host in text.replace(",", " ").split():
        host = host.strip().lower().rstrip(".")
        if host and host not in out:
            out.append(host)
    return out


@bp.route("/domains/<name>", methods=["GET", "POST"])
def domain(name: str) -> ResponseReturnValue:
    td = _domain(name)
    if request.method == "POST":
        if _readonly():
            abort(403, POSTAL_OWNS)
        f = request.form
        _state().store.update_track_domain(
            td,
            track_clicks="track_clicks" in f,
            track_loads="track_loads" in f,
            ssl_enabled="ssl_enabled" in f,
            excluded_click_domains=hosts(f.get("excluded_click_domains", "")),
        )
        flash(f"Saved the settings of {td.full_name}.")
        return redirect(url_for("dashboard.domain", name=td.full_name))
    return _page("domain.html", d=td, cert=_certificates().get(td.full_name), readonly=_readonly())


@bp.route("/domains/<name>/check-dns", methods=["POST"])
def check_dns(name: str) -> ResponseReturnValue:
    if _readonly():
        abort(403, POSTAL_OWNS)
    from postal_tracking_plugin.dns_check import check_track_domain
    from postal_tracking_plugin.store import utcnow

    td = _domain(name)
    result = check_track_domain(td.full_name, _state().config.dns.track_domain)
    _state().store.update_track_domain(
        td, dns_status=result.status, dns_error=result.error, dns_checked_at=utcnow()
    )
    flash(
        f"DNS of {td.full_name}: {result.status}" + (f": {result.error}" if result.error else ""),
        "" if result.status == "OK" else "error",
    )
    return redirect(url_for("dashboard.domain", name=td.full_name))


@bp.route("/domains/<name>/certificate", methods=["POST"])
def get_certificate(name: str) -> ResponseReturnValue:
    # Allowed in postal mode too: the sidecar issues certificates beside Postal 3
    # (the store refuses, in words, where it may not).
    from postal_tracking_plugin.certificates import Issuer

    td = _domain(name)
    st = _state()
    try:
        issuer = Issuer(st.config, st.store)
        (outcome,) = issuer.run(issuer.named([td.full_name]))
    except Error as exc:
        flash(f"No certificate for {td.full_name}: {exc}", "error")
    else:
        flash(f"{td.full_name}: {outcome.describe()}", "" if outcome.ok else "error")
    return redirect(url_for("dashboard.domain", name=td.full_name))


@bp.route("/health")
def health() -> ResponseReturnValue:
    return _page("health.html", checks=_health.checks(_state().config, _state().store))
