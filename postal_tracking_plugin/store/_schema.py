"""Table definitions: Postal's tables (names, columns, types) and our own.

Each table is written once, in MySQL's types as Postal declares them, and
rendered for either dialect by :func:`create_statements`. SQLite reads those
type names by affinity (``int(11)`` is INTEGER, ``decimal(18,6)`` NUMERIC), so
only the primary key and the index syntax differ.

Tables are created with ``IF NOT EXISTS`` only, so nothing is ever dropped or
altered. In ``tracking.store: postal`` only our own tables (:func:`is_ours`)
and a missing ``track_certificates`` are created: Postal owns the rest.

A message database we create ourselves gets all of Postal's message tables as
its migrations 1-20 leave them, and Postal's ``migrations`` table saying so, so
that Postal could adopt and migrate it (``postal upgrade`` starts from
``MAX(version)``; without the table it would start from 0 and fail on
``CREATE TABLE messages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]
    indexes: dict[str, str] = field(default_factory=dict)
    unique: dict[str, str] = field(default_factory=dict)
    #: One column, or a key spec such as ```minute`, `type`(8)``.
    primary_key: str = "id"


@dataclass(frozen=True)
class Seed:
    """Rows a migration inserts where missing: ``values`` of one-column ``table``."""

    table: str
    column: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Backfill:
    """A migration step that fills ``table`` (one of ours) from existing rows.

    ``"rollups"`` rebuilds the event rollups from ``tracking_events``
    (:func:`~postal_tracking_plugin.store._event_ops.rebuild_rollups`).
    """

    table: str
    what: str


@dataclass(frozen=True)
class Index:
    """An index added to a table that earlier migrations created (or, with ``drop``, removed)."""

    table: str
    name: str
    columns: str = ""
    drop: bool = False

    def name_in(self, dialect: str) -> str:
        """Its name in the database: MySQL names indexes per table, SQLite per schema."""
        return self.name if dialect == "mysql" else f"{self.table}_{self.name}"


@dataclass(frozen=True)
class Column:
    """A column added to a table that earlier migrations created (``ALTER TABLE ... ADD``)."""

    table: str
    name: str
    declaration: str


_V = "varchar(255) DEFAULT NULL"
_I = "int(11) DEFAULT NULL"
_DT = "datetime DEFAULT NULL"
_DT6 = "datetime(6) DEFAULT NULL"
_TS = "decimal(18,6) DEFAULT NULL"
_ID = "int(11) NOT NULL AUTO_INCREMENT"

# -- Postal's main database (db/schema.rb) ------------------------------------

SERVERS = Table(
    "servers",
    {
        "id": _ID,
        "organization_id": _I,
        "uuid": _V,
        "name": _V,
        "mode": _V,
        "ip_pool_id": _I,
        "created_at": _DT6,
        "updated_at": _DT6,
        "permalink": _V,
        "send_limit": _I,
        "deleted_at": _DT6,
        "message_retention_days": _I,
        "raw_message_retention_days": _I,
        "raw_message_retention_size": _I,
        "allow_sender": "tinyint(1) DEFAULT 0",
        "token": _V,
        "send_limit_approaching_at": _DT6,
        "send_limit_approaching_notified_at": _DT6,
        "send_limit_exceeded_at": _DT6,
        "send_limit_exceeded_notified_at": _DT6,
        "spam_threshold": "decimal(8,2) DEFAULT NULL",
        "spam_failure_threshold": "decimal(8,2) DEFAULT NULL",
        "postmaster_address": _V,
        "suspended_at": _DT6,
        "outbound_spam_threshold": "decimal(8,2) DEFAULT NULL",
        "domains_not_to_click_track": "text",
        "suspension_reason": _V,
        "log_smtp_data": "tinyint(1) DEFAULT 0",
        "privacy_mode": "tinyint(1) DEFAULT 0",
    },
    indexes={
        "index_servers_on_organization_id": "`organization_id`",
        "index_servers_on_permalink": "`permalink`(6)",
        "index_servers_on_token": "`token`(6)",
        "index_servers_on_uuid": "`uuid`(8)",
    },
)

DOMAINS = Table(
    "domains",
    {
        "id": _ID,
        "server_id": _I,
        "uuid": _V,
        "name": _V,
        "verification_token": _V,
        "verification_method": _V,
        "verified_at": _DT,
        "dkim_private_key": "text",
        "created_at": _DT6,
        "updated_at": _DT6,
        "dns_checked_at": _DT6,
        "spf_status": _V,
        "spf_error": _V,
        "dkim_status": _V,
        "dkim_error": _V,
        "mx_status": _V,
        "mx_error": _V,
        "return_path_status": _V,
        "return_path_error": _V,
        "outgoing": "tinyint(1) DEFAULT 1",
        "incoming": "tinyint(1) DEFAULT 1",
        "owner_type": _V,
        "owner_id": _I,
        "dkim_identifier_string": _V,
        "use_for_any": "tinyint(1) DEFAULT NULL",
    },
    indexes={
        "index_domains_on_server_id": "`server_id`",
        "index_domains_on_uuid": "`uuid`(8)",
    },
)

TRACK_DOMAINS = Table(
    "track_domains",
    {
        "id": _ID,
        "uuid": _V,
        "server_id": _I,
        "domain_id": _I,
        "name": _V,
        "dns_checked_at": _DT,
        "dns_status": _V,
        "dns_error": _V,
        "created_at": "datetime NOT NULL",
        "updated_at": "datetime NOT NULL",
        "ssl_enabled": "tinyint(1) DEFAULT 1",
        "track_clicks": "tinyint(1) DEFAULT 1",
        "track_loads": "tinyint(1) DEFAULT 1",
        "excluded_click_domains": "text",
    },
)

TRACK_CERTIFICATES = Table(
    "track_certificates",
    {
        "id": _ID,
        "domain": _V,
        "certificate": "text",
        "intermediaries": "text",
        "key": "text",
        "expires_at": _DT,
        "renew_after": _DT,
        "verification_path": _V,
        "verification_string": _V,
        "created_at": "datetime NOT NULL",
        "updated_at": "datetime NOT NULL",
    },
    indexes={"index_track_certificates_on_domain": "`domain`(8)"},
)

# -- Postal's message database (lib/postal/message_db/migrations) ------------

MESSAGES = Table(
    "messages",
    {
        "id": _ID,
        "token": _V,
        "scope": "varchar(10) DEFAULT NULL",
        "rcpt_to": _V,
        "mail_from": _V,
        "subject": _V,
        "message_id": _V,
        "timestamp": _TS,
        "route_id": _I,
        "domain_id": _I,
        "credential_id": _I,
        "status": _V,
        "held": "tinyint(1) DEFAULT 0",
        "size": _V,
        "last_delivery_attempt": _TS,
        "raw_table": _V,
        "raw_body_id": _I,
        "raw_headers_id": _I,
        "inspected": "tinyint(1) DEFAULT 0",
        "spam": "tinyint(1) DEFAULT 0",
        "spam_score": "decimal(8,2) DEFAULT 0",
        "threat": "tinyint(1) DEFAULT 0",
        "threat_details": _V,
        "bounce": "tinyint(1) DEFAULT 0",
        "bounce_for_id": "int(11) DEFAULT 0",
        "tag": _V,
        "loaded": _TS,
        "clicked": _TS,
        "received_with_ssl": "tinyint(1) DEFAULT NULL",
        "hold_expiry": _TS,
        "tracked_links": "int(11) DEFAULT 0",
        "tracked_images": "int(11) DEFAULT 0",
        "parsed": "tinyint DEFAULT 0",
        "endpoint_id": _I,
        "endpoint_type": _V,
    },
    indexes={
        "on_message_id": "`message_id`(8)",
        "on_token": "`token`(6)",
        "on_bounce_for_id": "`bounce_for_id`",
        "on_held": "`held`",
        "on_scope_and_status": "`scope`(1), `spam`, `status`(6), `timestamp`",
        "on_scope_and_tag": "`scope`(1), `spam`, `tag`(8), `timestamp`",
        "on_scope_and_spam": "`scope`(1), `spam`, `timestamp`",
        "on_scope_and_thr_status": "`scope`(1), `threat`, `status`(6), `timestamp`",
        "on_scope_and_threat": "`scope`(1), `threat`, `timestamp`",
        "on_rcpt_to": "`rcpt_to`(12), `timestamp`",
        "on_mail_from": "`mail_from`(12), `timestamp`",
        "on_raw_table": "`raw_table`(14)",
        "on_status": "`status`(8)",
    },
)

LINKS = Table(
    "links",
    {
        "id": _ID,
        "message_id": _I,
        "token": _V,
        "hash": _V,
        "url": "text",
        "timestamp": _TS,
    },
    indexes={"on_message_id": "`message_id`", "on_token": "`token`(8)"},
)

CLICKS = Table(
    "clicks",
    {
        "id": _ID,
        "message_id": _I,
        "link_id": _I,
        "ip_address": _V,
        "country": _V,
        "city": _V,
        "user_agent": _V,
        "timestamp": _TS,
    },
    indexes={"on_message_id": "`message_id`", "on_link_id": "`link_id`"},
)

LOADS = Table(
    "loads",
    {
        "id": _ID,
        "message_id": _I,
        "ip_address": _V,
        "country": _V,
        "city": _V,
        "user_agent": _V,
        "timestamp": _TS,
    },
    indexes={"on_message_id": "`message_id`"},
)

#: The rest of Postal's message database (migrations 1-20), which this project
#: never reads or writes: created only in message databases we make ourselves,
#: so that Postal finds every table its ``migrations`` rows promise.
DELIVERIES = Table(
    "deliveries",
    {
        "id": _ID,
        "message_id": _I,
        "status": _V,
        "code": _I,
        "output": "varchar(512) DEFAULT NULL",
        "details": "varchar(512) DEFAULT NULL",
        "sent_with_ssl": "tinyint(1) DEFAULT 0",
        "log_id": "varchar(100) DEFAULT NULL",
        "timestamp": _TS,
        "time": "decimal(8,2) DEFAULT NULL",
    },
    indexes={"on_message_id": "`message_id`"},
)

LIVE_STATS = Table(
    "live_stats",
    {
        "type": "varchar(20) NOT NULL",
        "minute": "int(11) NOT NULL",
        "count": _I,
        "timestamp": _TS,
    },
    primary_key="`minute`, `type`(8)",
)

RAW_MESSAGE_SIZES = Table(
    "raw_message_sizes",
    {"id": _ID, "table_name": _V, "size": "bigint DEFAULT NULL"},
    indexes={"on_table_name": "`table_name`(14)"},
)

STATS = tuple(
    Table(
        f"stats_{period}",
        {
            "id": _ID,
            "time": _I,
            "incoming": "bigint DEFAULT NULL",
            "outgoing": "bigint DEFAULT NULL",
            "spam": "bigint DEFAULT NULL",
            "bounces": "bigint DEFAULT NULL",
            "held": "bigint DEFAULT NULL",
        },
        unique={"on_time": "`time`"},
    )
    for period in ("hourly", "daily", "monthly", "yearly")
)

SPAM_CHECKS = Table(
    "spam_checks",
    {
        "id": _ID,
        "message_id": _I,
        "score": "decimal(8,2) DEFAULT NULL",
        "code": _V,
        "description": _V,
    },
    indexes={"on_message_id": "`message_id`", "on_code": "`code`(8)"},
)

SUPPRESSIONS = Table(
    "suppressions",
    {
        "id": _ID,
        "type": _V,
        "address": _V,
        "reason": _V,
        "timestamp": _TS,
        "keep_until": _TS,
    },
    indexes={"on_address": "`address`(6)", "on_keep_until": "`keep_until`"},
)

#: The message database's own ``webhook_requests`` (Postal's delivery log),
#: not the main database's queue of the same name.
MESSAGE_WEBHOOK_REQUESTS = Table(
    "webhook_requests",
    {
        "id": _ID,
        "uuid": _V,
        "event": _V,
        "attempt": _I,
        "timestamp": _TS,
        "status_code": "int(1) DEFAULT NULL",
        "body": "text",
        "payload": "text",
        "will_retry": "tinyint DEFAULT NULL",
        "url": _V,
        "webhook_id": _I,
    },
    indexes={
        "on_uuid": "`uuid`(8)",
        "on_event": "`event`(8)",
        "on_timestamp": "`timestamp`",
        "on_webhook_id": "`webhook_id`",
    },
)

#: Postal's own schema versions of a message database (its migration 01).
POSTAL_MESSAGE_MIGRATIONS = Table(
    "migrations", {"version": "int(11) NOT NULL"}, primary_key="version"
)

#: The last of Postal's message-database migrations this schema matches
#: (``20_increase_links_url_size``).
POSTAL_MESSAGE_SCHEMA_VERSION = 20

# -- Our own tables ------------------------------------------------------------

#: Our schema versions, one table per database. Named apart from Postal's own
#: ``migrations`` (message databases) and ``schema_migrations`` (main database)
#: so neither project's migrator ever reads the other's numbers.
TRACKING_MIGRATIONS = Table(
    "tracking_migrations",
    {"version": "int(11) NOT NULL", "applied_at": _DT},
    primary_key="version",
)

#: Named locks with an expiry, for work one node of a cluster does at a time
#: (certificate renewal).
TRACKING_LOCKS = Table(
    "tracking_locks",
    {"name": "varchar(191) NOT NULL", "holder": _V, "expires_at": _TS},
    primary_key="name",
)

#: Certificate issuance state per tracking domain, which Postal's
#: ``track_certificates`` has no columns for: the last attempt's outcome, its
#: error in words, and when to try again (failures back off).
TRACKING_CERTIFICATE_STATUS = Table(
    "tracking_certificate_status",
    {
        "domain": "varchar(191) NOT NULL",
        "status": "varchar(16) DEFAULT NULL",
        "last_error": "text",
        "attempts": "int(11) DEFAULT 0",
        "next_attempt_at": _DT,
        "updated_at": _DT,
    },
    primary_key="domain",
)

#: Postal's webhook tables (db/schema.rb), created only where they are missing:
#: in Postal mode Postal's own workers deliver the rows queued in
#: ``webhook_requests``.
WEBHOOKS = Table(
    "webhooks",
    {
        "id": _ID,
        "server_id": _I,
        "uuid": _V,
        "name": _V,
        "url": _V,
        "last_used_at": _DT,
        "all_events": "tinyint(1) DEFAULT 0",
        "enabled": "tinyint(1) DEFAULT 1",
        "sign": "tinyint(1) DEFAULT 1",
        "created_at": _DT6,
        "updated_at": _DT6,
    },
    indexes={"index_webhooks_on_server_id": "`server_id`"},
)

WEBHOOK_EVENTS = Table(
    "webhook_events",
    {"id": _ID, "webhook_id": _I, "event": _V, "created_at": _DT6},
    indexes={"index_webhook_events_on_webhook_id": "`webhook_id`"},
)

WEBHOOK_REQUESTS = Table(
    "webhook_requests",
    {
        "id": _ID,
        "server_id": _I,
        "webhook_id": _I,
        "url": _V,
        "event": _V,
        "uuid": _V,
        "payload": "text",
        "attempts": "int(11) DEFAULT 0",
        "retry_after": _DT6,
        "error": "text",
        "created_at": _DT6,
        "locked_by": _V,
        "locked_at": _DT,
    },
    indexes={
        "index_webhook_requests_on_locked_by": "`locked_by`",
        "index_webhook_requests_on_uuid": "`uuid`",
    },
)

#: Standalone webhook deliveries (``tracking.webhooks.urls``), persisted so
#: retries survive restarts. ``uuid`` is unique: queueing is idempotent.
TRACKING_WEBHOOK_DELIVERIES = Table(
    "tracking_webhook_deliveries",
    {
        "id": _ID,
        "uuid": "varchar(64) NOT NULL",
        "url": "text",
        "event": _V,
        "payload": "mediumtext",
        "attempts": "int(11) DEFAULT 0",
        "retry_after": _TS,
        "status": "varchar(16) DEFAULT 'pending'",
        "last_status_code": _I,
        "error": "text",
        "created_at": _TS,
        "delivered_at": _TS,
        "locked_by": _V,
        "locked_at": _TS,
    },
    unique={"on_uuid": "`uuid`"},
    indexes={"on_status_retry": "`status`(8), `retry_after`"},
)

#: One row per click or open event this plugin recorded, keyed by the event's
#: id and written in the same transaction as Postal's ``clicks``/``loads`` row,
#: so a replayed event is recognised and skipped. It also holds the bot flags,
#: which Postal's tables have no column for, and whether webhooks were queued.
TRACKING_EVENTS = Table(
    "tracking_events",
    {
        "event_id": "varchar(64) NOT NULL",
        "kind": "varchar(8) NOT NULL",
        "method": "varchar(8) DEFAULT NULL",
        "message_id": _I,
        "link_id": _I,
        "ip_address": _V,
        "user_agent": _V,
        "timestamp": _TS,
        "bot": "tinyint(1) DEFAULT 0",
        "reason": "varchar(40) DEFAULT NULL",
        "counted": "tinyint(1) DEFAULT 1",
        "webhooks_queued": "tinyint(1) DEFAULT 0",
        "recorded_at": _TS,
    },
    primary_key="event_id",
    indexes={
        "on_message_kind": "`message_id`, `kind`",
        "on_timestamp": "`timestamp`",
        "on_webhooks_queued": "`webhooks_queued`",
    },
)

#: Failed dashboard logins, one row each, shared by every dashboard process
#: (gunicorn workers, several hosts on one database). ``key`` is the SHA-256
#: of ``addr:<address>`` or ``user:<e-mail>``, so neither is kept in clear.
TRACKING_DASHBOARD_LOGIN_FAILURES = Table(
    "tracking_dashboard_login_failures",
    {"id": _ID, "key_hash": "varchar(64) NOT NULL", "failed_at": "decimal(18,6) NOT NULL"},
    indexes={"on_key_time": "`key_hash`, `failed_at`", "on_time": "`failed_at`"},
)

#: Counted events by hour, kept by the event writer in the transaction that
#: writes the events (so exactly once, like them) and by ``prune``, ``forget``
#: and the bot flagger's late flags: the dashboard's and ``stats``' totals,
#: chart and flag reasons read this instead of every event. ``hour`` is the
#: Unix time // 3600; ``tag`` the message's tag when the event was written
#: (``''`` for none); ``known`` whether the event has a message (an open
#: without one gets no Postal ``loads`` row); ``reason`` ``''`` for none.
TRACKING_EVENT_HOURS = Table(
    "tracking_event_hours",
    {
        "hour": "int(11) NOT NULL",
        "tag": "varchar(255) NOT NULL DEFAULT ''",
        "kind": "varchar(8) NOT NULL",
        "bot": "tinyint(1) NOT NULL",
        "counted": "tinyint(1) NOT NULL",
        "reason": "varchar(40) NOT NULL DEFAULT ''",
        "known": "tinyint(1) NOT NULL",
        "events": "int(11) NOT NULL DEFAULT 0",
    },
    # The tag last: the overview's GROUP BY (hour, kind, ...) over every tag
    # then follows the key's order instead of sorting in a temporary table.
    primary_key="`hour`, `kind`, `bot`, `counted`, `reason`, `known`, `tag`",
    indexes={"on_tag_hour": "`tag`, `hour`"},
)

#: Per message and kind, the first and last event of a class: ``who`` 0 for
#: counted events (what Postal's ``clicks``/``loads`` hold), 1 for people
#: (counted, not flagged), 2 for any event (the tag memory ``prune`` needs
#: once Postal has deleted the message: its times are always 0, so it is
#: written once and never updated). Unique counts over a range come from
#: here: a message whose first or last event is in the range counts, one whose
#: events surround the range is looked up in ``tracking_events``. Kept with
#: :data:`TRACKING_EVENT_HOURS`.
TRACKING_EVENT_SPANS = Table(
    "tracking_event_spans",
    {
        "message_id": "int(11) NOT NULL",
        "kind": "varchar(8) NOT NULL",
        "who": "tinyint(1) NOT NULL",
        "tag": "varchar(255) NOT NULL DEFAULT ''",
        "first_at": "decimal(18,6) NOT NULL",
        "last_at": "decimal(18,6) NOT NULL",
    },
    primary_key="`message_id`, `kind`, `who`",
    # One index for the counts with and without a tag: every index here is
    # rewritten when a span widens, and that upkeep was most of what the
    # rollups cost the writer (two indexes: 54 ms a 500-event batch on MariaDB).
    indexes={"on_kind_who_tag_last_first": "`kind`, `who`, `tag`, `last_at`, `first_at`"},
)

#: Dashboard accounts (``postal-tracking users``): ours, named so Postal's own
#: ``users`` table is never read or written. Passwords are Werkzeug scrypt hashes.
TRACKING_DASHBOARD_USERS = Table(
    "tracking_dashboard_users",
    {
        "id": _ID,
        "email": "varchar(191) NOT NULL",
        "password_hash": "varchar(255) NOT NULL",
        "created_at": _DT,
        "updated_at": _DT,
        "last_login_at": _DT,
    },
    unique={"on_email": "`email`"},
)

#: Dashboard sessions, server side: the cookie holds a random id whose SHA-256
#: is the key here, so logging out (or removing the account, or changing its
#: password) ends the session even if someone kept a copy of the cookie.
TRACKING_DASHBOARD_SESSIONS = Table(
    "tracking_dashboard_sessions",
    {
        "id": "varchar(64) NOT NULL",
        "user_id": "int(11) NOT NULL",
        "address": _V,
        "created_at": _TS,
        "expires_at": _TS,
    },
    indexes={"on_user_id": "`user_id`"},
)

#: Migrations: version -> tables it creates. Add a new version to change the
#: schema; existing databases get exactly the versions they lack.
MAIN_MIGRATIONS: dict[int, tuple[Table, ...]] = {
    1: (SERVERS, DOMAINS, TRACK_DOMAINS, TRACK_CERTIFICATES, TRACKING_LOCKS),
    2: (TRACKING_CERTIFICATE_STATUS,),
    3: (WEBHOOKS, WEBHOOK_EVENTS, WEBHOOK_REQUESTS, TRACKING_WEBHOOK_DELIVERIES),
    4: (TRACKING_DASHBOARD_USERS, TRACKING_DASHBOARD_SESSIONS),
    # The failed-login throttle, in the store rather than in each process's memory.
    5: (TRACKING_DASHBOARD_LOGIN_FAILURES,),
}
MESSAGE_MIGRATIONS: dict[int, tuple[Table | Index | Seed | Column | Backfill, ...]] = {
    1: (MESSAGES, LINKS, CLICKS, LOADS),
    2: (TRACKING_EVENTS,),
    # The all-links-at-once check reads one address's clicks on a message in the
    # last few seconds: without the address and the time in the index it read
    # every click the message ever had, a cost that grew with the table. The
    # new index starts with (message_id, kind), so that one goes.
    3: (
        Index(
            "tracking_events",
            "on_message_kind_ip_time",
            "`message_id`, `kind`, `ip_address`, `timestamp`",
        ),
        Index("tracking_events", "on_message_kind", drop=True),
    ),
    # With the link and the flag in the index too, the same checks read the
    # index alone. A burst from one address (a scanner, a benchmark) puts
    # thousands of clicks in the window; looking each row up cost MariaDB
    # 310-360 us of CPU per event written, 200-240 us without.
    4: (
        Index(
            "tracking_events",
            "on_message_kind_ip_time_link_bot",
            "`message_id`, `kind`, `ip_address`, `timestamp`, `link_id`, `bot`",
        ),
        Index("tracking_events", "on_message_kind_ip_time", drop=True),
    ),
    # Postal's remaining message tables and its ``migrations`` rows 1-20: a
    # database we made can be adopted by Postal. Created only where missing;
    # never in ``tracking.store: postal``, where Postal made the database.
    5: (
        DELIVERIES,
        LIVE_STATS,
        RAW_MESSAGE_SIZES,
        *STATS,
        SPAM_CHECKS,
        SUPPRESSIONS,
        MESSAGE_WEBHOOK_REQUESTS,
        POSTAL_MESSAGE_MIGRATIONS,
        Seed("migrations", "version", tuple(range(1, POSTAL_MESSAGE_SCHEMA_VERSION + 1))),
    ),
    # Webhook claims: one ``UPDATE ... WHERE webhooks_queued = 0`` that only one
    # process wins; a claim older than the lease is taken over (its holder died).
    6: (
        Column("tracking_events", "webhooks_claimed_by", "varchar(64) DEFAULT NULL"),
        Column("tracking_events", "webhooks_claimed_at", "decimal(18,6) DEFAULT NULL"),
    ),
    # The dashboard's and stats' figures, each read from an index alone:
    # people counts by (kind, flag, time) with the message for unique counts;
    # the hourly series and the flag reasons in one pass by time (which
    # replaces on_timestamp); a tag's events by message (its messages first).
    # One wide index by time served both of the first two, but a full scan of
    # it cost 1.2-1.5 s against 0.2-0.3 s for the narrow one (1M events, a
    # 128 MB buffer pool). Postal's loads and clicks get no index of ours: a
    # message database we make stays laid out as Postal's, for Postal to adopt
    # (tests/test_postal_mode.py). Timings: benchmarks/dashboard.py.
    7: (
        Index(
            "tracking_events",
            "on_kind_counted_bot_time_message",
            "`kind`, `counted`, `bot`, `timestamp`, `message_id`",
        ),
        Index(
            "tracking_events",
            "on_time_kind_bot_counted_reason",
            "`timestamp`, `kind`, `bot`, `counted`, `reason`",
        ),
        Index(
            "tracking_events",
            "on_message_kind_counted_bot_time_reason",
            "`message_id`, `kind`, `counted`, `bot`, `timestamp`, `reason`",
        ),
        Index("tracking_events", "on_timestamp", drop=True),
    ),
    # Rollups the overview reads instead of every event (1M events: the
    # overview went from 1.6 s to see docs/dashboard.md), filled from the
    # events already there.
    8: (
        TRACKING_EVENT_HOURS,
        TRACKING_EVENT_SPANS,
        Backfill("tracking_event_hours", "rollups"),
    ),
    # Top links read the clicks' links from the index too (it had message, not
    # link: the ranking read every event row, 1M of them); the old index is
    # its prefix, so it goes.
    9: (
        Index(
            "tracking_events",
            "on_kind_counted_bot_time_message_link",
            "`kind`, `counted`, `bot`, `timestamp`, `message_id`, `link_id`",
        ),
        Index("tracking_events", "on_kind_counted_bot_time_message", drop=True),
    ),
}

#: The collations Postal gives its databases: schema.rb's for the main
#: database, the provisioner's for message databases.
MAIN_COLLATION = "utf8mb4_general_ci"
MESSAGE_COLLATION = "utf8mb4_unicode_ci"

#: Postal never names a table of its own like this.
OUR_PREFIX = "tracking_"


def is_ours(step: Table | Index | Seed | Column | Backfill) -> bool:
    """Whether a migration step touches only a table this project owns."""
    return (step.name if isinstance(step, Table) else step.table).startswith(OUR_PREFIX)


def created_beside_postal(step: Table | Index | Seed | Column | Backfill) -> bool:
    """What ``tracking.store: postal`` may create: our tables, and a missing ``track_certificates``.

    Postal 3 dropped the model but kept the table (``db/schema.rb``); were it
    missing, the fast server still needs somewhere to keep certificates.
    """
    return is_ours(step) or (isinstance(step, Table) and step.name == TRACK_CERTIFICATES.name)


def create_statements(
    table: Table | Index | Column, dialect: str, collation: str = MAIN_COLLATION
) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` (and index) statements for ``dialect``.

    On MySQL, which has no ``CREATE INDEX IF NOT EXISTS``, the migration
    checks whether an :class:`Index` is there before running its statement.
    ``collation`` is the MySQL table's (SQLite has one).
    """
    if isinstance(table, Index):
        return [create_index_statement(table, dialect)]
    if isinstance(table, Column):
        return [f"ALTER TABLE `{table.table}` ADD COLUMN `{table.name}` {table.declaration}"]
    composite = "`" in table.primary_key
    if dialect == "mysql":
        cols = [f"`{name}` {decl}" for name, decl in table.columns.items()]
        key = table.primary_key if composite else f"`{table.primary_key}`"
        cols.append(f"PRIMARY KEY ({key})")
        cols += [f"UNIQUE KEY `{n}` ({spec})" for n, spec in table.unique.items()]
        cols += [f"KEY `{n}` ({spec})" for n, spec in table.indexes.items()]
        return [
            f"CREATE TABLE IF NOT EXISTS `{table.name}` (\n  "
            + ",\n  ".join(cols)
            + f"\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}"
        ]
    cols = []
    for name, decl in table.columns.items():
        if name == table.primary_key and "AUTO_INCREMENT" in decl:
            cols.append(f"`{name}` INTEGER PRIMARY KEY AUTOINCREMENT")
        elif name == table.primary_key:
            cols.append(f"`{name}` {decl} PRIMARY KEY")
        else:
            cols.append(f"`{name}` {decl}")
    if composite:
        key_columns = ", ".join(_strip_prefix_length(c) for c in table.primary_key.split(","))
        cols.append(f"PRIMARY KEY ({key_columns})")
    statements = [f"CREATE TABLE IF NOT EXISTS `{table.name}` (\n  " + ",\n  ".join(cols) + "\n)"]
    for kind, specs in (("UNIQUE INDEX", table.unique), ("INDEX", table.indexes)):
        for index, spec in specs.items():
            columns = ", ".join(_strip_prefix_length(c) for c in spec.split(","))
            statements.append(
                f"CREATE {kind} IF NOT EXISTS `{table.name}_{index}` ON `{table.name}` ({columns})"
            )
    return statements


def create_index_statement(index: Index, dialect: str) -> str:
    name = index.name_in(dialect)
    if dialect == "mysql":
        if index.drop:
            return f"DROP INDEX `{name}` ON `{index.table}`"
        return f"CREATE INDEX `{name}` ON `{index.table}` ({index.columns})"
    if index.drop:
        return f"DROP INDEX IF EXISTS `{name}`"
    columns = ", ".join(_strip_prefix_length(c) for c in index.columns.split(","))
    return f"CREATE INDEX IF NOT EXISTS `{name}` ON `{index.table}` ({columns})"


def _strip_prefix_length(column: str) -> str:
    """```token`(8)`` -> ```token```: SQLite has no index prefix lengths."""
    column = column.strip()
    return column.split("(", 1)[0] if "(" in column else column
