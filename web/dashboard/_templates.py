"""The dashboard's pages as Jinja templates, kept in code (no package data to install).

Plain HTML and a little CSS: every page works without JavaScript. Every form
carries the session's CSRF token (``csrf_field()``).
"""

from __future__ import annotations

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} · postal-tracking</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
header{background:#2d3748;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header a{color:#e2e8f0;text-decoration:none} header a.on{color:#fff;font-weight:600}
header form{margin-left:auto} main{padding:16px;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 16px;background:#fff}
th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.flash{padding:8px;margin:8px 0;background:#fefcbf;border:1px solid #ecc94b}
.error{background:#fed7d7;border-color:#fc8181}
.note{padding:8px;background:#ebf8ff;border:1px solid #90cdf4}
.bot{color:#9b2c2c} .person{color:#276749}
.chart{background:#fff;border:1px solid #e2e8f0;max-width:100%;height:auto}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
form.inline{display:inline} label{margin-right:12px}
</style></head><body>
{% if user %}<header>
<strong>postal-tracking</strong>
{% for s in servers %}<a href="{{ url_for('dashboard.overview', server=s.token) }}"
 class="{{ 'on' if server and s.id == server.id }}">{{ s.name }}</a>{% endfor %}
{% if server %}
<a href="{{ url_for('dashboard.messages', server=server.token) }}">Messages</a>
<a href="{{ url_for('dashboard.links', server=server.token) }}">Links</a>
{% endif %}
<a href="{{ url_for('dashboard.domains') }}">Tracking domains</a>
<a href="{{ url_for('dashboard.health') }}">Health</a>
<form method="post" action="{{ url_for('dashboard.logout') }}">{{ csrf_field() }}
<span>{{ user.email }}</span> <button type="submit" id="logout">Log out</button></form>
</header>{% endif %}
<main>
{% for category, text in get_flashed_messages(with_categories=true) %}
<div class="flash {{ category }}">{{ text }}</div>{% endfor %}
{% block body %}{% endblock %}
</main></body></html>"""

LOGIN = """{% extends "base.html" %}{% block title %}Log in{% endblock %}{% block body %}
<h1>Log in</h1>
{% if error %}<div class="flash error" id="login-error">{{ error }}</div>{% endif %}
<form method="post" action="{{ url_for('dashboard.login', next=request.args.get('next')) }}">{{ csrf_field() }}
<p><label>E-mail <input type="email" name="email" value="{{ email or '' }}" required autofocus></label></p>
<p><label>Password <input type="password" name="password" required></label></p>
<p><button type="submit">Log in</button></p></form>
<p>Accounts are made with <code>postal-tracking users add EMAIL</code>.</p>
{% endblock %}"""

FILTER = """<form method="get" class="filter">
<label>From <input type="date" name="from" value="{{ form.get('from','') }}"></label>
<label>To <input type="date" name="to" value="{{ form.get('to','') }}"></label>
<label>Tag <input name="tag" value="{{ form.get('tag','') }}" placeholder="all"></label> <button type="submit" id="show">Show</button></form>"""

OVERVIEW = (
    """{% extends "base.html" %}{% block title %}{{ server.name }}{% endblock %}{% block body %}
<h1>{{ server.name }} <small>({{ server.token }})</small></h1>
"""
    + FILTER
    + """
<table id="figures"><tr><th></th><th>All events</th><th>People</th></tr>
<tr><th>Messages sent</th><td class="n" id="sent">{{ s.messages.sent }}</td><td></td></tr>
<tr><th>Tracked messages</th><td class="n" id="tracked">{{ s.messages.tracked }}</td><td></td></tr>
<tr><th>Opens</th><td class="n" id="opens-all">{{ s.opens.all.total }}</td><td class="n" id="opens-people">{{ s.opens.people.total }}</td></tr>
<tr><th>Unique opens</th><td class="n" id="unique-opens-all">{{ s.opens.all.unique }}</td><td class="n" id="unique-opens-people">{{ s.opens.people.unique }}</td></tr>
<tr><th>Open rate</th><td class="n">{{ pct(s.rates.open_rate_all) }}</td><td class="n">{{ pct(s.rates.open_rate_people) }}</td></tr>
<tr><th>Clicks</th><td class="n" id="clicks-all">{{ s.clicks.all.total }}</td><td class="n" id="clicks-people">{{ s.clicks.people.total }}</td></tr>
<tr><th>Unique clicks</th><td class="n" id="unique-clicks-all">{{ s.clicks.all.unique }}</td><td class="n" id="unique-clicks-people">{{ s.clicks.people.unique }}</td></tr>
<tr><th>Click rate</th><td class="n">{{ pct(s.rates.click_rate_all) }}</td><td class="n">{{ pct(s.rates.click_rate_people) }}</td></tr>
</table>
<h2>Over time <small>({{ 'daily' if bucket >= 86400 else 'hourly' }}, UTC)</small></h2>
<p class="legend"><span style="background:#2b6cb0"></span>people<span style="background:#cbd5e0"></span>machines</p>
<h3>Opens</h3>{{ opens_chart|safe }}
<h3>Clicks</h3>{{ clicks_chart|safe }}
<details><summary>The chart's numbers</summary>
<table id="series"><tr><th>{{ 'Day' if bucket >= 86400 else 'Hour' }}</th><th>Opens, people</th><th>Opens, machines</th><th>Clicks, people</th><th>Clicks, machines</th></tr>
{% for p in series %}<tr><td>{{ label(p.start) }}</td><td class="n">{{ p.opens_people }}</td><td class="n">{{ p.opens_machines }}</td><td class="n">{{ p.clicks_people }}</td><td class="n">{{ p.clicks_machines }}</td></tr>{% endfor %}
</table></details>
<h2>Flags</h2>
{% if s.flags %}<table id="flags"><tr><th>Reason</th><th>Kind</th><th>Counts as</th><th>Events</th></tr>
{% for f in s.flags %}<tr><td>{{ f.reason }}</td><td>{{ f.kind }}</td><td>{{ 'machine' if f.bot else 'person behind a proxy' }}</td><td class="n">{{ f.events }}</td></tr>{% endfor %}
</table>{% else %}<p>No flagged events in this range.</p>{% endif %}
<p><a href="{{ url_for('dashboard.links', server=server.token, **form) }}">Top links</a></p>
{% endblock %}"""
)

MESSAGES = """{% extends "base.html" %}{% block title %}Messages{% endblock %}{% block body %}
<h1>Messages of {{ server.name }}</h1>
<form method="get">
<label>Recipient <input name="rcpt" value="{{ form.get('rcpt','') }}"></label>
<label>Subject <input name="subject" value="{{ form.get('subject','') }}"></label>
<label>Tag <input name="tag" value="{{ form.get('tag','') }}"></label>
<label>Token <input name="token" value="{{ form.get('token','') }}"></label>
<label>From <input type="date" name="from" value="{{ form.get('from','') }}"></label>
<label>To <input type="date" name="to" value="{{ form.get('to','') }}"></label>
<button type="submit" id="search">Search</button></form>
<table id="messages"><tr><th>Sent (UTC)</th><th>Recipient</th><th>Subject</th><th>Tag</th><th>Opened</th><th>Clicked</th><th>Token</th></tr>
{% for m in rows %}<tr><td>{{ when(m.timestamp) }}</td><td>{{ m.rcpt_to or '' }}</td><td>{{ m.subject or '' }}</td><td>{{ m.tag or '' }}</td>
<td>{{ when(m.loaded) if m.loaded else '' }}</td><td>{{ when(m.clicked) if m.clicked else '' }}</td>
<td><a href="{{ url_for('dashboard.message', server=server.token, token=m.token) }}">{{ m.token }}</a></td></tr>
{% else %}<tr><td colspan="7">No messages match.</td></tr>{% endfor %}</table>
{% if rows|length >= limit %}<p>Showing the newest {{ limit }}; narrow the search to see others.</p>{% endif %}
{% endblock %}"""

MESSAGE = """{% extends "base.html" %}{% block title %}Message {{ m.token }}{% endblock %}{% block body %}
<h1>Message {{ m.token }}</h1>
<table><tr><th>To</th><td>{{ m.rcpt_to or '' }}</td></tr><tr><th>From</th><td>{{ m.mail_from or '' }}</td></tr>
<tr><th>Subject</th><td>{{ m.subject or '' }}</td></tr><tr><th>Tag</th><td>{{ m.tag or '' }}</td></tr>
<tr><th>Sent (UTC)</th><td>{{ when(m.timestamp) }}</td></tr>
<tr><th>Tracked</th><td>{{ m.tracked_links or 0 }} links, {{ m.tracked_images or 0 }} images</td></tr></table>
<h2>Timeline</h2>
<table id="timeline"><tr><th>Time (UTC)</th><th>Kind</th><th>Link</th><th>Address</th><th>Agent</th><th>Flag</th><th>Reason</th></tr>
{% for e in events %}<tr class="event"><td>{{ when(e.timestamp) }}</td><td>{{ e.kind }}{% if e.method and e.method != 'GET' %} ({{ e.method }}){% endif %}</td>
<td>{{ e.url or '' }}</td><td>{{ e.ip_address or '' }}</td><td>{{ e.user_agent or '' }}</td>
<td class="{{ 'bot' if e.bot else 'person' }}">{{ 'machine' if e.bot else 'person' }}{% if not e.counted %}, not counted{% endif %}</td><td>{{ e.reason or '' }}</td></tr>
{% else %}<tr><td colspan="7">No opens or clicks recorded.</td></tr>{% endfor %}</table>
<h2>Links</h2><ul>{% for l in links %}<li>{{ l.url }}</li>{% endfor %}</ul>
{% endblock %}"""

LINKS = (
    """{% extends "base.html" %}{% block title %}Links{% endblock %}{% block body %}
<h1>Links of {{ server.name }}</h1>
"""
    + FILTER
    + """
<table id="links"><tr><th>People</th><th>All</th><th>Clicks</th><th>URL</th><th>Clicks over time ({{ 'daily' if bucket >= 86400 else 'hourly' }})</th></tr>
{% for l in top %}<tr><td class="n">{{ l.unique_people }}</td><td class="n">{{ l.unique_all }}</td><td class="n">{{ l.clicks }}</td><td>{{ l.url }}</td><td>{{ spark[l.url]|safe }}</td></tr>
{% else %}<tr><td colspan="5">No clicks in this range.</td></tr>{% endfor %}</table>
{% endblock %}"""
)

DOMAINS = """{% extends "base.html" %}{% block title %}Tracking domains{% endblock %}{% block body %}
<h1>Tracking domains</h1>
{% if readonly %}<p class="note">{{ readonly }}</p>{% endif %}
<table id="domains"><tr><th>Domain</th><th>Server</th><th>DNS</th><th>SSL</th><th>Certificate</th><th>Expires (UTC)</th><th></th></tr>
{% for d in domains %}<tr><td>{{ d.full_name }}</td><td>{{ d.server_name }}</td>
<td>{{ d.dns_status or '-' }}{% if d.dns_error %}<br><small>{{ d.dns_error }}</small>{% endif %}</td>
<td>{{ 'yes' if d.ssl_enabled else 'no' }}</td>
<td class="cert-status">{{ certs[d.full_name].status if certs.get(d.full_name) else '-' }}
{% set c = certs.get(d.full_name) %}{% if c and c.last_error %}<br><small>last error: {{ c.last_error }}</small>{% endif %}
{% if c and c.note %}<br><small>{{ c.note }}</small>{% endif %}</td>
<td>{{ c.expires_at.strftime('%Y-%m-%d %H:%M') if c and c.expires_at else '-' }}</td>
<td><a href="{{ url_for('dashboard.domain', name=d.full_name) }}">settings</a></td></tr>
{% else %}<tr><td colspan="7">No tracking domains yet: <code>postal-tracking track-domains add</code>.</td></tr>{% endfor %}</table>
{% endblock %}"""

DOMAIN = """{% extends "base.html" %}{% block title %}{{ d.full_name }}{% endblock %}{% block body %}
<h1>{{ d.full_name }}</h1>
{% if readonly %}<p class="note" id="readonly">{{ readonly }}</p>{% endif %}
<table><tr><th>Server</th><td>{{ d.server_name }}</td></tr>
<tr><th>DNS</th><td id="dns-status">{{ d.dns_status or '-' }}{% if d.dns_error %}: {{ d.dns_error }}{% endif %}
{% if d.dns_checked_at %}<br><small>checked {{ d.dns_checked_at.strftime('%Y-%m-%d %H:%M') }} UTC</small>{% endif %}</td></tr>
<tr><th>Certificate</th><td id="cert-status">{{ cert.status if cert else '-' }}{% if cert and cert.expires_at %}, expires {{ cert.expires_at.strftime('%Y-%m-%d %H:%M') }} UTC{% endif %}
{% if cert and cert.last_error %}<br><small>last error: {{ cert.last_error }}</small>{% endif %}{% if cert and cert.note %}<br><small>{{ cert.note }}</small>{% endif %}</td></tr></table>
<h2>Settings</h2>
<form method="post" action="{{ url_for('dashboard.domain', name=d.full_name) }}" id="settings">{{ csrf_field() }}
<fieldset {{ 'disabled' if readonly }}>
<p><label><input type="checkbox" name="track_clicks" {{ 'checked' if d.track_clicks }}> Track clicks</label>
<label><input type="checkbox" name="track_loads" {{ 'checked' if d.track_loads }}> Track opens</label>
<label><input type="checkbox" name="ssl_enabled" {{ 'checked' if d.ssl_enabled }}> SSL</label></p>
<p><label for="excluded">Excluded link domains</label> (one per line; <code>*.example.com</code> for a domain and its subdomains; links to them are not tracked)<br>
<textarea id="excluded" name="excluded_click_domains" rows="5" cols="50">{{ d.excluded_click_domains|join('\\n') }}</textarea></p>
<p><button type="submit" id="save">Save</button></p></fieldset></form>
{% if not readonly %}
<form method="post" class="inline" action="{{ url_for('dashboard.check_dns', name=d.full_name) }}">{{ csrf_field() }}<button type="submit" id="check-dns">Check DNS now</button></form>
{% endif %}
<form method="post" class="inline" action="{{ url_for('dashboard.get_certificate', name=d.full_name) }}">{{ csrf_field() }}<button type="submit" id="get-certificate">Get the certificate now</button></form>
{% endblock %}"""

HEALTH = """{% extends "base.html" %}{% block title %}Health{% endblock %}{% block body %}
<h1>Health</h1>
<table id="health">{% for name, value, ok in checks %}<tr><th>{{ name }}</th><td class="{{ '' if ok else 'bot' }}">{{ value }}</td></tr>{% endfor %}</table>
{% endblock %}"""

NO_SERVERS = """{% extends "base.html" %}{% block title %}No servers{% endblock %}{% block body %}
<h1>No servers yet</h1><p>Add one with <code>postal-tracking servers add NAME</code>.</p>{% endblock %}"""

TEMPLATES = {
    "base.html": BASE,
    "login.html": LOGIN,
    "overview.html": OVERVIEW,
    "messages.html": MESSAGES,
    "message.html": MESSAGE,
    "links.html": LINKS,
    "domains.html": DOMAINS,
    "domain.html": DOMAIN,
    "health.html": HEALTH,
    "no_servers.html": NO_SERVERS,
}
